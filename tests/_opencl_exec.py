"""Run a whole Relax model's OpenCL kernels on any OpenCL device (PoCL in the tests).

The TVM wheels ship no OpenCL runtime, so this stands in for TVM's VM on the host side: it
walks the lowered Relax ``main`` (allocations and kernel-function calls, in order), and for
every call runs the kernels TVM generated for it with the launch extents and argument order
TVM's own lowering records (the device ``PrimFunc``'s ``thread_extent`` attributes and its
buffer parameters, from ``split_host_device_mods``), not from parsing kernel source.
"""

from __future__ import annotations

from typing import Any

import numpy as np

_AXES = {"x": 0, "y": 1, "z": 2}


def _launch_extents(stmt: Any, found: dict[str, int]) -> None:
    """Collect ``thread_extent`` attributes (blockIdx.* / threadIdx.*) below ``stmt``."""
    from tvm import tirx

    if isinstance(stmt, tirx.AttrStmt) and stmt.attr_key == "thread_extent":
        found[str(stmt.node.thread_tag)] = int(stmt.value)
    for field in ("body", "then_case", "else_case"):
        child = getattr(stmt, field, None)
        if isinstance(child, tirx.Stmt):
            _launch_extents(child, found)
    for child in getattr(stmt, "seq", None) or []:
        _launch_extents(child, found)


def kernel_plan(
    relax_mod: Any, target: Any
) -> dict[str, list[tuple[str, list[str], tuple, tuple]]]:
    """PrimFunc name -> its kernels: ``(kernel name, buffer names of its params, global size,
    local size)`` from TVM's host/device split of the lowered module."""
    import tvm
    from tvm.tirx.build import split_host_device_mods

    prims = {gv: f for gv, f in relax_mod.functions.items() if isinstance(f, tvm.tirx.PrimFunc)}
    mod = tvm.tirx.transform.BindTarget(target)(tvm.IRModule(prims))
    pipeline, _, _ = tvm.tirx.get_tir_pipeline("default")  # what tvm.compile uses
    with target:
        mod = pipeline(mod)
    _, devices = split_host_device_mods(mod)
    plan: dict[str, list] = {}
    for dev_mod in devices.values():
        for gv, kern in dev_mod.functions.items():
            name = gv.name_hint
            owner = name.rsplit("_kernel", 1)[0]
            params = []
            for p in kern.params:
                if "handle" not in str(p.ty).lower() and not str(p.name).endswith("_ptr"):
                    raise NotImplementedError(f"{name}: scalar kernel argument {p.name}")
                params.append(str(p.name).removesuffix("_ptr"))
            ext: dict[str, int] = {}
            _launch_extents(kern.body, ext)
            block = [1, 1, 1]
            grid = [1, 1, 1]
            for tag, n in ext.items():
                kind, axis = tag.split(".")
                (grid if kind == "blockIdx" else block)[_AXES[axis]] = n
            glob = tuple(g * b for g, b in zip(grid, block, strict=True))
            plan.setdefault(owner, []).append((name, params, glob, tuple(block)))
    for kernels in plan.values():
        kernels.sort(key=lambda k: k[0])
    return plan


def run_main(relax_mod: Any, target: Any, source: str, inputs: list[np.ndarray], cl: Any) -> Any:
    """Run lowered ``relax_mod['main']`` on ``inputs`` with the kernels of ``source``."""
    import tvm
    from tvm import relax

    plan = kernel_plan(relax_mod, target)
    devices = [d for p in cl.get_platforms() for d in p.get_devices()]
    ctx = cl.Context(devices[:1])
    queue = cl.CommandQueue(ctx)
    prog = cl.Program(ctx, source).build()
    main = relax_mod["main"]
    env: dict[Any, np.ndarray] = dict(zip(main.params, inputs, strict=True))

    const_type = type(relax.const(np.zeros(1, np.float32)))  # tvm.ir.GenericConst in 0.27

    def value(e: Any) -> np.ndarray:
        if isinstance(e, const_type):
            return e.value.numpy()
        return env[e]

    launched = []
    for block in main.body.blocks:
        for b in block.bindings:
            call = b.value
            if not isinstance(call, relax.Call):
                continue
            op = call.op
            if isinstance(op, tvm.ir.Op) and op.name == "relax.vm.alloc_tensor":
                shape = [int(v) for v in call.args[2].values]
                env[b.var] = np.zeros(shape, str(call.args[3].value))
            elif isinstance(op, relax.GlobalVar):
                prim = relax_mod[op]
                arrays = [np.ascontiguousarray(value(a)) for a in call.args]
                names = [str(p) for p in prim.params]
                mf = cl.mem_flags
                bufs = {
                    n: cl.Buffer(ctx, mf.READ_WRITE | mf.COPY_HOST_PTR, hostbuf=a)
                    for n, a in zip(names, arrays, strict=True)
                }
                for kname, params, glob, local in plan[op.name_hint]:
                    kernel = getattr(prog, kname)
                    kernel(queue, glob, local, *[bufs[p] for p in params])
                    launched.append(kname)
                for arg, n, a in zip(call.args, names, arrays, strict=True):
                    if isinstance(arg, relax.Var):
                        cl.enqueue_copy(queue, a, bufs[n])
                        env[arg] = a
    return env[main.body.body], launched
