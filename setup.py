"""Only the optional C extension lives here; everything else is in pyproject.toml.

``optional=True``: where it cannot be compiled (no C compiler), mergesmith installs
without it and runs the pure-torch implementations, which give the same numbers more slowly.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "mergesmith.native._kernels",
            ["mergesmith/native/kernels.c"],
            # -ffp-contract=off: no fused multiply-add, so rounding matches torch's separate ops.
            # -fno-trapping-math lets selects vectorise; no reassociation, so results are unchanged.
            extra_compile_args=["-O3", "-ffp-contract=off", "-fno-trapping-math", "-fno-math-errno", "-std=c11"],
            optional=True,
        )
    ]
)
