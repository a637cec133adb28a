/*
 * A test-only LD_PRELOAD shim: fdatasync never returns while the file named by
 * WL_TEST_STALL_FLAG exists, the way a dead disk or a stuck storage engine leaves a sync.
 * Used by tests/cluster.rs to check that a node whose storage stalls exits (code 4) instead
 * of hanging, and comes back whole after a restart. Not part of any build of the product.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <unistd.h>

int fdatasync(int fd) {
    static int (*real_fdatasync)(int);
    if (!real_fdatasync) {
        real_fdatasync = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    }
    const char *flag = getenv("WL_TEST_STALL_FLAG");
    if (flag && access(flag, F_OK) == 0) {
        for (;;) {
            sleep(1);
        }
    }
    return real_fdatasync(fd);
}
