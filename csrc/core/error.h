/* minisd: status codes and the thread-local error message.
 *
 * Every fallible function of the core returns MSD_OK (0) or a negative
 * MSD_ERR_* code (or NULL for constructors) and leaves a message for
 * msd_last_error(). The core never prints, exits or aborts on user input. */
#ifndef MSD_ERROR_H
#define MSD_ERROR_H

enum msd_status {
    MSD_OK = 0,
    MSD_ERR_ARG = -1,    /* a bad argument: wrong value, range or option */
    MSD_ERR_SHAPE = -2,  /* shapes that do not fit together */
    MSD_ERR_MEM = -3,    /* out of memory, or a size too large to allocate */
    MSD_ERR_IO = -4,     /* a file could not be opened, read or written */
    MSD_ERR_FORMAT = -5, /* a file's contents are malformed or unsupported */
    MSD_ERR_STATE = -6   /* an operation in the wrong state (freed graph...) */
};

/* The message of the last error set on this thread ("" if none). The
 * pointer stays valid until the next error on this thread. */
const char *msd_last_error(void);

/* Sets the message (printf format) and returns code, so that a function
 * can write `return msd_error(MSD_ERR_SHAPE, "...", ...)`. */
int msd_error(int code, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

/* Internal invariant checks (not for user input): in debug builds a
 * failed check records "file:line: expr" as the error and returns
 * MSD_ERR_STATE from the enclosing int-returning function. */
#ifdef NDEBUG
#define MSD_ASSERT(e) ((void)0)
#else
#define MSD_ASSERT(e)                                                      \
    do {                                                                   \
        if (!(e))                                                          \
            return msd_error(MSD_ERR_STATE, "%s:%d: internal check failed: %s", \
                             __FILE__, __LINE__, #e);                      \
    } while (0)
#endif

#endif
