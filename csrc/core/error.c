#include "error.h"

#include <stdarg.h>
#include <stdio.h>

static _Thread_local char last_message[1024];

const char *msd_last_error(void)
{
    return last_message;
}

int msd_error(int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_message, sizeof last_message, fmt, ap);
    va_end(ap);
    return code;
}
