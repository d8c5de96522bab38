/* A CPU stand-in for libcuda.so.1, for testing devices/cuda_driver.py's ctypes
 * signatures without a GPU. Device pointers are host pointers; the only
 * "kernel" is an fp32 matmul C = A @ B whose shape the test sets with
 * stub_set_shape(). Error paths: PTX containing "INVALID" fails to JIT (with a
 * log), a launch with more than 1024 threads fails like the real driver. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef int CUresult;
static int M, N, K, launches, last_grid[3], last_block[3];

void stub_set_shape(int m, int n, int k) { M = m; N = n; K = k; }
int stub_launches(void) { return launches; }
void stub_last_dims(int *out) { memcpy(out, last_grid, sizeof last_grid); memcpy(out + 3, last_block, sizeof last_block); }

CUresult cuInit(unsigned f) { return f == 0 ? 0 : 1; }
CUresult cuDriverGetVersion(int *v) { *v = 12040; return 0; }
CUresult cuDeviceGetCount(int *n) { *n = 1; return 0; }
CUresult cuDeviceGet(int *d, int ordinal) { if (ordinal != 0) return 101; *d = 0; return 0; }
CUresult cuDeviceGetName(char *buf, int len, int dev) { strncpy(buf, "Stub GPU", len); return 0; }
CUresult cuDeviceGetAttribute(int *v, int attr, int dev) {
    switch (attr) { case 75: *v = 8; break; case 76: *v = 6; break; case 16: *v = 84; break;
                    case 38: *v = 1 << 20; break; default: *v = 1024; }
    return 0;
}
CUresult cuDeviceTotalMem_v2(size_t *v, int dev) { *v = (size_t)24 << 30; return 0; }
static int ctx_token = 42;
CUresult cuDevicePrimaryCtxRetain(void **ctx, int dev) { *ctx = &ctx_token; return 0; }
CUresult cuDevicePrimaryCtxRelease_v2(int dev) { return 0; }
CUresult cuDevicePrimaryCtxReset_v2(int dev) { return 0; }
CUresult cuCtxSetCurrent(void *ctx) { return ctx == &ctx_token ? 0 : 201; }
CUresult cuCtxSynchronize(void) { return 0; }
static int module_token, function_token;
CUresult cuModuleLoadDataEx(void **mod, const char *image, unsigned n, int *opts, void **vals) {
    if (strncmp(image, "//", 2) != 0) return 200;
    if (strstr(image, "INVALID")) {
        for (unsigned i = 0; i < n; i++)
            if (opts[i] == 5) {
                size_t cap = 0;
                for (unsigned j = 0; j < n; j++) if (opts[j] == 6) cap = (size_t)(uintptr_t)vals[j];
                strncpy((char *)vals[i], "ptxas fatal: stub rejects INVALID", cap);
            }
        return 218;
    }
    *mod = &module_token; return 0;
}
CUresult cuModuleGetFunction(void **fn, void *mod, const char *name) {
    if (mod != &module_token) return 400;
    if (strcmp(name, "kf_main") != 0) return 500;
    *fn = &function_token; return 0;
}
CUresult cuModuleUnload(void *mod) { return mod == &module_token ? 0 : 400; }
CUresult cuFuncGetAttribute(int *v, int attr, void *fn) { *v = attr == 4 ? 32 : (attr == 0 ? 1024 : 0); return 0; }
CUresult cuMemAlloc_v2(uint64_t *p, size_t n) { void *m = aligned_alloc(256, (n + 255) / 256 * 256); if (!m) return 2; *p = (uint64_t)(uintptr_t)m; return 0; }
CUresult cuMemFree_v2(uint64_t p) { free((void *)(uintptr_t)p); return 0; }
CUresult cuMemcpyHtoD_v2(uint64_t d, const void *h, size_t n) { memcpy((void *)(uintptr_t)d, h, n); return 0; }
CUresult cuMemcpyDtoH_v2(void *h, uint64_t d, size_t n) { memcpy(h, (void *)(uintptr_t)d, n); return 0; }
CUresult cuMemsetD8_v2(uint64_t d, unsigned char v, size_t n) { memset((void *)(uintptr_t)d, v, n); return 0; }
CUresult cuLaunchKernel(void *fn, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                        unsigned shared, void *stream, void **params, void **extra) {
    if (fn != &function_token) return 400;
    if ((unsigned long)bx * by * bz > 1024) return 1;
    last_grid[0] = gx; last_grid[1] = gy; last_grid[2] = gz; last_block[0] = bx; last_block[1] = by; last_block[2] = bz;
    const float *a = (const float *)(uintptr_t)*(uint64_t *)params[0];
    const float *b = (const float *)(uintptr_t)*(uint64_t *)params[1];
    float *c = (float *)(uintptr_t)*(uint64_t *)params[2];
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            float s = 0;
            for (int k = 0; k < K; k++) s += a[i * K + k] * b[k * N + j];
            c[i * N + j] = s;
        }
    launches++;
    return 0;
}
CUresult cuEventCreate(void **ev, unsigned flags) { *ev = calloc(1, sizeof(double)); return 0; }
CUresult cuEventRecord(void *ev, void *stream) {
    struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t);
    *(double *)ev = t.tv_sec * 1e3 + t.tv_nsec / 1e6; return 0;
}
CUresult cuEventSynchronize(void *ev) { return 0; }
CUresult cuEventElapsedTime_v2(float *ms, void *a, void *b) { *ms = (float)(*(double *)b - *(double *)a); return 0; }
CUresult cuEventDestroy_v2(void *ev) { free(ev); return 0; }
CUresult cuGetErrorName(CUresult code, const char **s) {
    switch (code) { case 1: *s = "CUDA_ERROR_INVALID_VALUE"; return 0; case 218: *s = "CUDA_ERROR_INVALID_PTX"; return 0;
                    case 500: *s = "CUDA_ERROR_NOT_FOUND"; return 0; default: *s = "CUDA_ERROR_UNKNOWN"; return 0; }
}
