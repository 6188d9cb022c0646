/* libFuzzer target: the .npy reader on arbitrary bytes (msd_npy_load_mem). Any input must
 * give a tensor or an error, never a crash, a leak or undefined behaviour. */
#include <stddef.h>
#include <stdint.h>

#include "minisd.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    msd_tensor *t = NULL;
    if (msd_npy_load_mem("fuzz.npy", data, size, &t) == MSD_OK)
        msd_tensor_release(t);
    return 0;
}
