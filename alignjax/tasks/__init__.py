"""Built-in tasks that write their own data (`data.builtin: NAME`), so recipes run offline."""

from alignjax.tasks import (
    conditioned_style,
    judged_facts,
    sentiment_words,
    unpaired_style,
    user_length,
    weighted_style,
)

BUILTIN_TASKS = {
    "conditioned_style": conditioned_style.write_task,
    "weighted_style": weighted_style.write_task,
    "unpaired_style": unpaired_style.write_task,
    "user_length": user_length.write_task,
    "judged_facts": judged_facts.write_task,
    "sentiment_words": sentiment_words.write_task,
}
