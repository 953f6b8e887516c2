/* A process that sees an AVX2-only CPU: preloaded by benchmarks/avx2_only.py.
 *
 * Linux can make the CPUID instruction fault (ARCH_SET_CPUID, on CPUs with
 * "cpuid_fault" in /proc/cpuinfo). This library turns that on when it is loaded,
 * before the program's own code runs, and answers each CPUID in its SIGSEGV
 * handler with the real values less AVX-512, AMX and AVX-VNNI, so that
 * TensorFlow, oneDNN and NumPy choose what they choose on an AVX2-only CPU
 * (an AMD EPYC without AVX-512, say). The setting is per thread, inherited by
 * the threads and forks created after it and reset by execve; the preload
 * (LD_PRELOAD in the environment) sets it again in each program started.
 *
 * Every other SIGSEGV goes to the handler the program installed: `sigaction`
 * and `signal` for SIGSEGV are answered here, keeping this handler in place
 * (Python's faulthandler, which pytest turns on, installs one). SIGSEGV is
 * never blocked, as a fault while it is blocked would kill the process.
 */
#define _GNU_SOURCE
#include <asm/prctl.h>
#include <cpuid.h>
#include <dlfcn.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>

#define BIT(n) (1u << (n))

/* Leaf 7, subleaf 0: EBX AVX512F DQ IFMA PF ER CD BW VL; ECX AVX512_VBMI VBMI2
 * VNNI BITALG VPOPCNTDQ; EDX AVX512_4VNNIW 4FMAPS VP2INTERSECT, AMX_BF16,
 * AVX512_FP16, AMX_TILE, AMX_INT8. */
static const uint32_t LEAF7_EBX = BIT(16) | BIT(17) | BIT(21) | BIT(26) | BIT(27) | BIT(28) |
                                  BIT(30) | BIT(31);
static const uint32_t LEAF7_ECX = BIT(1) | BIT(6) | BIT(11) | BIT(12) | BIT(14);
static const uint32_t LEAF7_EDX = BIT(2) | BIT(3) | BIT(8) | BIT(22) | BIT(23) | BIT(24) | BIT(25);
/* Leaf 7, subleaf 1: EAX AVX-VNNI, AVX512_BF16, AMX_FP16, AVX-IFMA; EDX
 * AVX-VNNI-INT8, AVX-NE-CONVERT, AVX10. */
static const uint32_t LEAF7_1_EAX = BIT(4) | BIT(5) | BIT(21) | BIT(23);
static const uint32_t LEAF7_1_EDX = BIT(4) | BIT(5) | BIT(19);

static struct sigaction chained; /* What the program asked for SIGSEGV to do. */
static volatile sig_atomic_t installed;
static volatile long answered;   /* CPUIDs answered (reported with TFP_OOD_AVX2_ONLY_COUNT). */

static int (*real_sigaction)(int, const struct sigaction *, struct sigaction *);

static long set_cpuid(int enabled) { return syscall(SYS_arch_prctl, ARCH_SET_CPUID, enabled); }

static void masked_cpuid(uint32_t leaf, uint32_t subleaf, uint32_t r[4]) {
  set_cpuid(1);
  __cpuid_count(leaf, subleaf, r[0], r[1], r[2], r[3]);
  set_cpuid(0);
  if (leaf == 7 && subleaf == 0) {
    r[1] &= ~LEAF7_EBX;
    r[2] &= ~LEAF7_ECX;
    r[3] &= ~LEAF7_EDX;
  } else if (leaf == 7 && subleaf == 1) {
    r[0] &= ~LEAF7_1_EAX;
    r[3] &= ~LEAF7_1_EDX;
  }
}

static void on_segv(int sig, siginfo_t *info, void *context) {
  greg_t *regs = ((ucontext_t *)context)->uc_mcontext.gregs;
  /* A faulting CPUID is a general-protection fault (SI_KERNEL) at "0f a2". */
  if (info->si_code == SI_KERNEL) {
    const unsigned char *ip = (const unsigned char *)regs[REG_RIP];
    if (ip[0] == 0x0f && ip[1] == 0xa2) {
      uint32_t r[4];
      masked_cpuid((uint32_t)regs[REG_RAX], (uint32_t)regs[REG_RCX], r);
      regs[REG_RAX] = r[0];
      regs[REG_RBX] = r[1];
      regs[REG_RCX] = r[2];
      regs[REG_RDX] = r[3];
      regs[REG_RIP] += 2;
      answered++;
      return;
    }
  }
  struct sigaction program = chained;
  if ((program.sa_flags & SA_SIGINFO) && program.sa_sigaction) {
    program.sa_sigaction(sig, info, context);
  } else if (program.sa_handler != SIG_DFL && program.sa_handler != SIG_IGN) {
    program.sa_handler(sig);
  } else { /* Default: die of it, as without this library. */
    struct sigaction dfl = {0};
    dfl.sa_handler = SIG_DFL;
    real_sigaction(SIGSEGV, &dfl, NULL);
    if (info->si_code <= 0) raise(sig); /* Sent by kill/raise: it would not come again. */
  }
}

int sigaction(int sig, const struct sigaction *act, struct sigaction *old) {
  if (!real_sigaction) real_sigaction = dlsym(RTLD_NEXT, "sigaction");
  if (sig != SIGSEGV || !installed) return real_sigaction(sig, act, old);
  if (old) *old = chained;
  if (act) chained = *act;
  return 0;
}

sighandler_t signal(int sig, sighandler_t handler) {
  if (sig != SIGSEGV || !installed) {
    static sighandler_t (*real_signal)(int, sighandler_t);
    if (!real_signal) real_signal = dlsym(RTLD_NEXT, "signal");
    return real_signal(sig, handler);
  }
  sighandler_t previous = chained.sa_handler;
  chained.sa_handler = handler;
  chained.sa_flags = SA_RESTART;
  sigemptyset(&chained.sa_mask);
  return previous;
}

static int (*real_sigprocmask)(int, const sigset_t *, sigset_t *);
static int (*real_pthread_sigmask)(int, const sigset_t *, sigset_t *);

static const sigset_t *without_segv(int how, const sigset_t *set, sigset_t *copy) {
  if (!set || how == SIG_UNBLOCK || !installed) return set;
  *copy = *set;
  sigdelset(copy, SIGSEGV);
  return copy;
}

int sigprocmask(int how, const sigset_t *set, sigset_t *old) {
  if (!real_sigprocmask) real_sigprocmask = dlsym(RTLD_NEXT, "sigprocmask");
  sigset_t copy;
  return real_sigprocmask(how, without_segv(how, set, &copy), old);
}

int pthread_sigmask(int how, const sigset_t *set, sigset_t *old) {
  if (!real_pthread_sigmask) real_pthread_sigmask = dlsym(RTLD_NEXT, "pthread_sigmask");
  sigset_t copy;
  return real_pthread_sigmask(how, without_segv(how, set, &copy), old);
}

static void report(void) { fprintf(stderr, "avx2_only: CPUIDs answered: %ld\n", answered); }

__attribute__((constructor)) static void start(void) {
  real_sigaction = dlsym(RTLD_NEXT, "sigaction");
  struct sigaction act = {0};
  act.sa_sigaction = on_segv;
  act.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_NODEFER;
  sigemptyset(&act.sa_mask);
  if (real_sigaction(SIGSEGV, &act, &chained) != 0) return;
  if (set_cpuid(0) != 0) { /* The CPU cannot fault on CPUID: nothing is masked. */
    real_sigaction(SIGSEGV, &chained, NULL);
    write(2, "avx2_only: this CPU cannot make CPUID fault (no cpuid_fault)\n", 61);
    _exit(3);
  }
  installed = 1;
  if (getenv("TFP_OOD_AVX2_ONLY_COUNT")) atexit(report);
}
