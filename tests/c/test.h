/* A minimal test harness for the core's C tests: CHECK records a failure
 * and returns from the test; main() runs TESTs with RUN and ends with a
 * "N passed, N failed" line. */
#ifndef MSD_TEST_H
#define MSD_TEST_H

#include <math.h>
#include <stdio.h>

static int test_failed_flag, tests_passed, tests_failed;

#define CHECK(cond)                                                                   \
    do {                                                                              \
        if (!(cond)) {                                                                \
            fprintf(stderr, "  %s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
            test_failed_flag = 1;                                                     \
            return;                                                                   \
        }                                                                             \
    } while (0)

#define CHECK_OK(expr)                                                                 \
    do {                                                                               \
        int rc_ = (expr);                                                              \
        if (rc_ != 0) {                                                                \
            fprintf(stderr, "  %s:%d: %s returned %d: %s\n", __FILE__, __LINE__, #expr, \
                    rc_, msd_last_error());                                            \
            test_failed_flag = 1;                                                      \
            return;                                                                    \
        }                                                                              \
    } while (0)

/* |a - b| <= atol + rtol |b| */
#define CHECK_CLOSE(a, b, atol, rtol)                                                        \
    do {                                                                                     \
        double a_ = (a), b_ = (b);                                                           \
        if (!(fabs(a_ - b_) <= (atol) + (rtol) * fabs(b_))) {                                \
            fprintf(stderr, "  %s:%d: %s = %.9g, expected %s = %.9g\n", __FILE__, __LINE__, \
                    #a, a_, #b, b_);                                                         \
            test_failed_flag = 1;                                                            \
            return;                                                                          \
        }                                                                                    \
    } while (0)

#define RUN(fn)                                         \
    do {                                                \
        test_failed_flag = 0;                           \
        fn();                                           \
        if (test_failed_flag) {                         \
            tests_failed++;                             \
            fprintf(stderr, "FAIL %s\n", #fn);          \
        } else {                                        \
            tests_passed++;                             \
            printf("ok   %s\n", #fn);                   \
        }                                               \
    } while (0)

#define TEST_SUMMARY()                                                 \
    (printf("%d passed, %d failed\n", tests_passed, tests_failed),     \
     tests_failed ? 1 : 0)

#endif
