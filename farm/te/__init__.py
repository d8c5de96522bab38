"""farm.te: the tensor-expression language (TVM's te, in spirit and names)."""
from farm.te.expr import Expr, Var, IterVar, Const, Load, Reduce, Select, Call, Cast, BinOp, Cmp, Logic, sum, max, min, select, if_then_else, equal, not_equal, all_of, any_of, logical_not, maximum, minimum, exp, sqrt, log, tanh, abs, sigmoid, floor, ceil, const
from farm.te.tensor import Tensor, Operation, PlaceholderOp, ComputeOp, placeholder, compute, reduce_axis  # noqa: F401


def create_schedule(ops):  # type: ignore[no-untyped-def]
    """A default schedule for the given output operation(s) (see farm.schedule)."""
    from farm.te.schedule import create_schedule as _create

    return _create(ops)
