/* Prints the library and ABI versions, and checks the header matches the library.
 *
 *   cc -std=c99 -Wall -Wextra -Werror version.c $(pkg-config --cflags --libs natter)
 */
#include <stdio.h>

#include "natter.h"

int main(void) {
    unsigned abi = natter_abi_version();
    unsigned header = NATTER_ABI_MAJOR << 16 | NATTER_ABI_MINOR << 8 | NATTER_ABI_PATCH;
    printf("natter %s, ABI %u.%u.%u\n", natter_version(), abi >> 16, (abi >> 8) & 0xff,
           abi & 0xff);
    /* Same major, library at least as new; before 1.0 every minor may break: same minor. */
    int same_minor = ((abi >> 8) & 0xff) == ((header >> 8) & 0xff);
    if (abi >> 16 != header >> 16 || abi < header || (header >> 16 == 0 && !same_minor)) {
        fprintf(stderr, "library ABI %u is not compatible with header ABI %u\n", abi, header);
        return 1;
    }
    printf("%s\n", natter_result_message(NATTER_OK));
    return 0;
}
