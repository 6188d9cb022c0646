/* libFuzzer target: the safetensors reader on arbitrary bytes (msd_safetensors_load_mem:
 * the JSON header parser, the entry checks, the dtype conversions). */
#include <stddef.h>
#include <stdint.h>

#include "minisd.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    msd_safetensors st;
    if (msd_safetensors_load_mem("fuzz.safetensors", data, size, &st) == MSD_OK)
        msd_safetensors_free(&st);
    return 0;
}
