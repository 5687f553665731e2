"""How many JIT compilations a run of the Triton kernels costs on a GPU, counted without one.

Triton compiles a kernel once per *specialisation*: the constexpr values, the options (warps,
stages) and, for every int argument it is allowed to specialise, whether it is 1 or divisible by
16 (pointers: whether 16-byte aligned). A new (N, K) divisibility class therefore compiles the
whole search kernel again, unless the argument is listed in `do_not_specialize`.

`CompileCounter` runs under TRITON_INTERPRET=1 (no compiler, no GPU): it wraps the interpreter's
launch and, for each launch, computes the key that the compiled runtime would look up in its
kernel cache, with Triton's own binder (`create_function_from_signature`, the same code
`JITFunction.run` uses) for an sm_90 target. Distinct keys = compilations a GPU run would do
with the same tile configs (under the interpreter the autotuner has one config; on a GPU each
autotune key compiles every config it keeps; `OfflineCompiler` compiles them the same way).

    with CompileCounter() as cc:
        sgcvq.nearest_code(x, codebook, backend="triton")
    cc.count, cc.by_kernel()

`OfflineCompiler` is its counterpart without the interpreter (and without a GPU): the host
launchers run as usual on CPU tensors, every kernel launch is turned into a compile for sm_90
with the runtime's own specialisations and options (the binder, `JITFunction._pack_args`,
`triton.compile`), and nothing runs. The autotuner compiles every config it keeps, as on a GPU.
It reads what the compiled kernel became (.ci/triton_sm90_check.py) and fills TRITON_CACHE_DIR.
"""
from __future__ import annotations

import collections
import os

import triton

__all__ = ["CompileCounter", "OfflineCompiler"]


def _binder(fn, do_not_specialize, do_not_specialize_on_alignment):
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend
    from triton.runtime.jit import JITFunction, create_function_from_signature

    jf = JITFunction(fn, do_not_specialize=do_not_specialize,
                     do_not_specialize_on_alignment=do_not_specialize_on_alignment)
    backend = make_backend(GPUTarget("cuda", 90, 32))
    return create_function_from_signature(jf.signature, jf.params, backend)


class CompileCounter:
    """Counts distinct compile keys of the Triton kernels launched inside the `with` block."""

    def __init__(self, count_specialised: bool = False):
        self.count_specialised = count_specialised
        if os.environ.get("TRITON_INTERPRET") != "1":
            raise RuntimeError("CompileCounter counts under TRITON_INTERPRET=1 (set before triton is imported)")
        self.keys: collections.OrderedDict = collections.OrderedDict()
        # The same launches keyed as if no argument were do_not_specialize: what they would have
        # compiled before issue 22 (the count to compare with).
        self.specialised_keys: collections.OrderedDict = collections.OrderedDict()
        self._binders: dict = {}

    def _key(self, interp, args, kwargs, honour_do_not_specialize=True):
        fn = interp.fn
        b = (fn, honour_do_not_specialize)
        if b not in self._binders:
            self._binders[b] = _binder(fn, interp.kwargs.get("do_not_specialize") if honour_do_not_specialize else None,
                                       interp.kwargs.get("do_not_specialize_on_alignment"))
        _, spec, options = self._binders[b](*args, **kwargs)
        opts = tuple(sorted((k, v) for k, v in options.items() if k in ("num_warps", "num_stages", "num_ctas")))
        return fn.__name__, repr(spec), opts

    def __enter__(self):
        from triton.runtime.interpreter import InterpretedFunction

        self._cls = InterpretedFunction
        self._run = InterpretedFunction.run
        counter = self

        def run(interp, *args, grid, warmup, **kwargs):
            key = counter._key(interp, args, kwargs)
            counter.keys[key] = counter.keys.get(key, 0) + 1
            if counter.count_specialised:
                k2 = counter._key(interp, args, kwargs, honour_do_not_specialize=False)
                counter.specialised_keys[k2] = counter.specialised_keys.get(k2, 0) + 1
            return counter._run(interp, *args, grid=grid, warmup=warmup, **kwargs)

        InterpretedFunction.run = run
        return self

    def __exit__(self, *exc):
        self._cls.run = self._run
        return False

    @property
    def count(self) -> int:
        """Distinct compilations (one tile config per autotune key, as under the interpreter)."""
        return len(self.keys)

    @property
    def launches(self) -> int:
        return sum(self.keys.values())

    def by_kernel(self) -> dict:
        out: dict = collections.Counter()
        for name, _, _ in self.keys:
            out[name] += 1
        return dict(out)



class OfflineCompiler:
    """Inside the block, each Triton launch compiles its kernel for `target` (default sm_90) with
    the runtime's specialisations, once per distinct key, and launches nothing.

    compile=False only counts the keys (fast). `kernels` maps each key to
    (kernel name, CompiledKernel or None, compile seconds, the kernel's constexprs)."""

    def __init__(self, target=None, compile: bool = True):
        if os.environ.get("TRITON_INTERPRET") == "1":
            raise RuntimeError("OfflineCompiler needs the compiler: unset TRITON_INTERPRET before importing triton")
        from triton.backends.compiler import GPUTarget

        self.target = target or GPUTarget("cuda", 90, 32)
        self.compile = compile
        self.kernels: collections.OrderedDict = collections.OrderedDict()
        self._binders: dict = {}

    def _launch(self, jf, args, kwargs):
        import time

        from triton import knobs
        from triton.compiler import ASTSource, make_backend
        from triton.runtime.jit import create_function_from_signature

        kwargs["debug"] = kwargs.get("debug", jf.debug) or knobs.runtime.debug
        kwargs["instrumentation_mode"] = knobs.compilation.instrumentation_mode
        if jf not in self._binders:
            backend = make_backend(self.target)
            self._binders[jf] = (backend, create_function_from_signature(jf.signature, jf.params, backend))
        backend, binder = self._binders[jf]
        bound_args, spec, options = binder(*args, **kwargs)
        key = (jf.fn.__name__, repr(spec), repr(sorted(options.items())))
        if key in self.kernels:
            return
        opts, signature, constexprs, attrs = jf._pack_args(backend, kwargs, bound_args, spec, options)
        consts = {jf.arg_names[p[0]]: v for p, v in constexprs.items() if len(p) == 1}
        compiled, seconds = None, 0.0
        if self.compile:
            t0 = time.process_time()
            compiled = triton.compile(ASTSource(jf, signature, constexprs, attrs), target=self.target,
                                      options=opts.__dict__)
            seconds = time.process_time() - t0
        self.kernels[key] = (jf.fn.__name__, compiled, seconds, consts)

    def __enter__(self):
        from triton.runtime.autotuner import Autotuner
        from triton.runtime.jit import JITFunction

        self._saved = (JITFunction.run, Autotuner._bench)
        me = self

        def run(jf, *args, grid, warmup, **kwargs):
            me._launch(jf, args, kwargs)
            return None

        def bench(tuner, *args, config, **meta):
            # What the GPU autotuner does first for each config it keeps: compile it.
            current = dict(meta, **config.all_kwargs())
            tuner.fn.run(*args, **current)
            return [0.0, 0.0, 0.0]

        JITFunction.run = run
        Autotuner._bench = bench
        # No kernel runs, so what the launchers allocate for a kernel to fill stays unwritten: zeros
        # instead of torch.empty's garbage keep the host code between launches on valid indices.
        import torch

        self._empty = torch.empty
        torch.empty = lambda *a, **k: self._empty(*a, **k).zero_()
        return self

    def __exit__(self, *exc):
        from triton.runtime.autotuner import Autotuner
        from triton.runtime.jit import JITFunction

        import torch

        JITFunction.run, Autotuner._bench = self._saved
        torch.empty = self._empty
        return False

    @property
    def count(self) -> int:
        return len(self.kernels)

    def by_kernel(self) -> dict:
        out: dict = collections.Counter()
        for name, _, _, _ in self.kernels.values():
            out[name] += 1
        return dict(out)
