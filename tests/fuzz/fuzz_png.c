/* libFuzzer target: the PNG reader on arbitrary bytes (msd_png_load_mem: the chunk walk,
 * then libpng). Any input must give a tensor or an error, never a crash or a large
 * allocation (-rss_limit_mb in scripts/fuzz.sh catches those). */
#include <stddef.h>
#include <stdint.h>

#include "minisd.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    msd_tensor *t = NULL;
    if (msd_png_load_mem("fuzz.png", data, size, &t) == MSD_OK)
        msd_tensor_release(t);
    return 0;
}
