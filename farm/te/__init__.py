"""farm.te: the tensor-expression language (TVM's te, in spirit and names)."""
from farm.te.expr import (
    BinOp,
    Call,
    Cast,
    Cmp,
    Const,
    Expr,
    IterVar,
    Load,
    Logic,
    Reduce,
    Select,
    Var,
    abs,
    all_of,
    any_of,
    ceil,
    const,
    equal,
    exp,
    floor,
    if_then_else,
    log,
    logical_not,
    max,
    maximum,
    min,
    minimum,
    not_equal,
    select,
    sigmoid,
    sqrt,
    sum,
    tanh,
)
from farm.te.tensor import ComputeOp, Operation, PlaceholderOp, Tensor, compute, placeholder, reduce_axis  # noqa: F401


def create_schedule(ops):  # type: ignore[no-untyped-def]
    """A default schedule for the given output operation(s) (see farm.te.schedule)."""
    from farm.te.schedule import create_schedule as _create

    return _create(ops)


# TVM's names for the condition combinators.
all = all_of  # noqa: A001
any = any_of  # noqa: A001
