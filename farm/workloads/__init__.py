"""What can be tuned: the template API (``space``), the registry, the built-in templates and their
numpy references.

Deliberately empty: a device server imports ``farm.workloads.references`` alone, without the
templates, config spaces or compiler. Import from the submodules (``farm.workloads.registry``).
"""
