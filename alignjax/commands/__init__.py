"""The command-line verbs, one module each; `alignjax.cli` only dispatches to them."""
