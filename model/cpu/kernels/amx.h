// AMX set-up shared by cpu_decode.c and cpu_attention.c (include where HAVE_AMX-style guards hold:
// AVX512-BF16, AMX-TILE and AMX-BF16 compiled in, on Linux).
#pragma once

#include <immintrin.h>
#include <stdint.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

// Linux hands AMX's tile state only to a process that asks for it, once.
static int amx_permitted(void) {
    static int permitted = -1;
    if (permitted < 0)
        permitted = syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XFEATURE_XTILEDATA */) == 0;
    return permitted;
}

// Tiles 0..count-1 of 16 rows each, bytes_per_row[t] bytes a row.
static void configure_16row_tiles(int count, const uint16_t *bytes_per_row) {
    struct {
        uint8_t palette, start_row, reserved[14];
        uint16_t bytes_per_row[16];
        uint8_t rows[16];
    } config;
    memset(&config, 0, sizeof config);
    config.palette = 1;
    for (int t = 0; t < count; t++) config.rows[t] = 16, config.bytes_per_row[t] = bytes_per_row[t];
    _tile_loadconfig(&config);
}
