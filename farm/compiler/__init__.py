"""The compiler: lowering a schedule to a loop nest (``ir``), bound inference (``arith``), code
generation (``codegen``: x86-64/AArch64 objects, NVPTX) and ``builder.build``."""
