// Which of the AVX2 kernels (csrc/cpu/avx2/) run: on x86-64 CPUs with AVX2 + FMA + F16C and no
// AVX-512 (AMD Zen 2/3, Intel client CPUs, older Xeons), where the AVX-512 scans cannot.
//
// SGCVQ_CPU_AVX2 (options.h; read at each call, so tests can switch it): "1" forces the AVX2 kernels on a
// CPU that also has AVX-512 (the AVX-512 scans and bf16 paths then stand down, so any developer
// machine can test and time them); "0" turns them off (the portable loops run); unset: the CPU's
// features decide. SGCVQ_CPU_PORTABLE=1 turns them off too.
#pragma once

namespace sgcvq {
namespace cpu {

// The CPU has AVX2, FMA and F16C (false on other architectures).
bool cpu_has_avx2();
// SGCVQ_CPU_AVX2=1 (a CPU without AVX2 then raises an error that says so).
bool avx2_forced();
// The AVX2 kernels run: forced, or the CPU has AVX2 and the AVX-512 scans do not run; never
// under SGCVQ_CPU_PORTABLE=1 or SGCVQ_CPU_AVX2=0.
bool avx2_kernels_on();

}  // namespace cpu
}  // namespace sgcvq
