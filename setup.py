"""Builds the optional compiled NTU reader; everything else is configured in pyproject.toml.

``optional=True``: without a C compiler the install still succeeds and ``mmcl prepare`` uses
its NumPy reader (same results, about 2x slower).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "mmcl.data._ntuparse",
            ["mmcl/data/_ntuparse.c"],
            extra_compile_args=["-O2"],
            optional=True,
        )
    ]
)
