"""The CPU runtime: load built objects, call and time them, seeded buffers and the output comparison.

Imported by the builder (host modules) and by the CPU device backend; it imports neither.
"""
