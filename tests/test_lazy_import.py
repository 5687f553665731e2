"""`import sgcvq` loads no compiled extension and no Triton; the first op call loads them.

Each case runs in a fresh interpreter: this test process has long since loaded everything.
"""
import subprocess
import sys
import textwrap

import pytest

from sgcvq import ops


def run(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_import_loads_no_extension_and_no_triton():
    run("""
        import sys
        import sgcvq
        assert "sgcvq._C" not in sys.modules, "import sgcvq loaded the C++ extension"
        assert "sgcvq._C_cuda" not in sys.modules
        assert "triton" not in sys.modules, "import sgcvq imported triton"
    """)


@pytest.mark.skipif(not ops.HAS_CPU_EXTENSION, reason="needs the compiled CPU extension")
def test_first_op_call_loads_the_extension():
    run("""
        import sys
        import torch
        import sgcvq
        x, codebook = torch.randn(50, 8), torch.randn(7, 8)
        index, _ = sgcvq.nearest_code(x, codebook)
        assert "sgcvq._C" in sys.modules
        assert torch.equal(index, sgcvq.nearest_code_reference(x, codebook)[0])
    """)


@pytest.mark.skipif(not ops.HAS_CPU_EXTENSION, reason="needs the compiled CPU extension")
def test_capabilities_and_attributes_load_on_demand():
    run("""
        import sys
        import sgcvq
        caps = sgcvq.capabilities()
        assert caps["cpu"]["extension_built"] and "sgcvq._C" in sys.modules
    """)
    run("""
        import sgcvq
        assert sgcvq.ops.HAS_CPU_EXTENSION
        assert "bf16_path" in sgcvq._C.cpu_capabilities()
    """)


@pytest.mark.skipif(not ops.HAS_CPU_EXTENSION, reason="needs the compiled CPU extension")
def test_compiled_first_call_loads_the_extension():
    # The first call may be inside torch.compile(fullgraph=True): load() runs at trace time.
    run("""
        import torch
        import sgcvq
        x, codebook = torch.randn(40, 8), torch.randn(9, 8)
        fn = torch.compile(lambda a, b: sgcvq.nearest_code(a, b, check=False)[0], fullgraph=True, backend="eager")
        assert torch.equal(fn(x, codebook), sgcvq.nearest_code_reference(x, codebook)[0])
    """)


def test_missing_extension_says_why():
    # A path where sgcvq._C cannot be found: the reference runs with a warning naming the reason,
    # and forcing the CPU backend raises with it.
    run("""
        import sys, warnings
        import torch
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name in ("sgcvq._C", "sgcvq._C_cuda"):
                    raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        sys.meta_path.insert(0, Block())
        import sgcvq
        x, codebook = torch.randn(20, 4), torch.randn(5, 4)
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            index, _ = sgcvq.nearest_code(x, codebook)
        assert torch.equal(index, sgcvq.nearest_code_reference(x, codebook)[0])
        assert any("sgcvq._C is not built" in str(m.message) for m in w), [str(m.message) for m in w]
        try:
            sgcvq.nearest_code(x, codebook, backend="cpu")
        except RuntimeError as exc:
            assert "sgcvq._C is not built" in str(exc), exc
        else:
            raise AssertionError("backend='cpu' without the extension did not raise")
        assert "not built" in sgcvq.capabilities()["cpu"]["why"]
    """)
