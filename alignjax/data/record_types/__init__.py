"""Record types, one module each, looked up by `record_type_named(data.record_type)`.

Adding a record type is one module that defines a `RecordType` and one `register` line.
"""

from alignjax.data.record_types import cut, preference, prompt, sft, unpaired
from alignjax.data.record_types.registry import (
    RecordType,
    make_builder,
    record_type_named,
    register,
    registered,
)

for _module in (preference, sft, prompt, cut, unpaired):
    register(_module.RECORD_TYPE)

__all__ = ["RecordType", "make_builder", "record_type_named", "register", "registered"]
