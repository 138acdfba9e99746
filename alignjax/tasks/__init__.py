"""Built-in tasks that write their own data (`data.builtin: NAME`), so recipes run offline."""

from alignjax.tasks import conditioned_style, unpaired_style, weighted_style

BUILTIN_TASKS = {
    "conditioned_style": conditioned_style.write_task,
    "weighted_style": weighted_style.write_task,
    "unpaired_style": unpaired_style.write_task,
}
