"""README.md and docs/*.md name only things that exist.

Four checks over every page, each problem reported as `file:line`:
- a relative link's target file exists, and its `#anchor` is the GitHub slug of one of
  that page's headings;
- a repository path the text names (`configs/...yaml`, `launch/...`, `tests/...`) exists,
  and a test module named by its file name (`test_x.py`) exists under tests/;
- a config key named in backticks (`loss.kto.loss_type`), set in a YAML snippet, or set
  as a `key=value` override of an `alignjax` command resolves through the training
  config's dataclasses: the root config `load_config` returns, its nested sections, the
  methods' `loss.<name>` sections from the method registry, and `stages.N.` as a stage's
  overrides of the same keys; a dict-typed field takes any subkey.

Plain text parsing and dataclass reflection only: nothing is compiled.
"""

from __future__ import annotations

import dataclasses
import re
import shlex
import types
import typing
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]

_FENCE = re.compile(r"^\s*(```+|~~~+)\s*([\w+-]*)")
_INLINE_CODE = re.compile(r"(`+)(.+?)\1")
_LINK = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_REPO_PATH = re.compile(r"(?<![\w./<>-])((?:alignjax|configs|docs|launch|tests)/[\w./-]*[\w/])")
_TEST_MODULE = re.compile(r"(?<![\w/.-])(test_\w+\.py)\b")
_OVERRIDE = re.compile(r"^([A-Za-z_]\w*(?:\.\w+)*)=(.*)$", re.S)
# Commands that take `CONFIG [key=value ...]`.
_CONFIG_COMMAND = re.compile(
    r"(?:\balignjax\s+(?:train|compile-check|precompute-ref|data\s+check|bench\s+train)"
    r"|\blaunch/\w+_train\.sh)\s"
)


@dataclasses.dataclass(frozen=True)
class Page:
    path: Path
    lines: list[str]
    fenced: dict[int, str]  # line number -> the info string of the fenced block it is in
    spans: list[tuple[int, str]]  # (line number, text) of each inline code span
    prose: str  # the text outside code, spans and fences blanked, line breaks kept


def read_page(path: Path) -> Page:
    lines = path.read_text(encoding="utf-8").splitlines()
    fenced, fence = {}, None
    for number, text in enumerate(lines, start=1):
        opening = _FENCE.match(text)
        if fence is not None or opening:
            fenced[number] = fence if fence is not None else opening.group(2)
        if opening:
            fence = None if fence is not None else opening.group(2)
    outside = "\n".join("" if n in fenced else t for n, t in enumerate(lines, start=1))
    spans = [
        (outside.count("\n", 0, m.start()) + 1, m.group(2).replace("\n", " "))
        for m in _INLINE_CODE.finditer(outside)
    ]
    prose = _INLINE_CODE.sub(lambda m: re.sub(r"[^\n]", " ", m.group(0)), outside)
    return Page(path, lines, fenced, spans, prose)


def code_pieces(page: Page) -> list[tuple[int, str]]:
    """(line number, text) of every fenced line and inline code span, in page order."""
    fenced = [(n, page.lines[n - 1]) for n in page.fenced if not _FENCE.match(page.lines[n - 1])]
    return sorted(fenced + page.spans)


def github_slug(heading: str) -> str:
    """GitHub's anchor for a heading: the rendered text lowercased, punctuation dropped,
    spaces turned into hyphens."""
    text = _LINK.sub(lambda m: m.group(0)[m.group(0).index("[") + 1 : m.group(0).index("]")], heading)
    text = text.replace("`", "").strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    page = read_page(path)
    seen: dict[str, int] = {}
    out = set()
    for number, text in enumerate(page.lines, start=1):
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", text)
        if number in page.fenced or not match:
            continue
        slug = github_slug(match.group(1))
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        out.add(slug if count == 0 else f"{slug}-{count}")
    return out


def link_problems(page: Page) -> list[str]:
    out = []
    for match in _LINK.finditer(page.prose):
        target = match.group(1)
        if re.match(r"^[a-z][\w+.-]*:", target):  # https:, mailto:, ...
            continue
        file_part, _, anchor = target.partition("#")
        dest = (page.path.parent / file_part).resolve() if file_part else page.path
        where = f"{_name(page.path)}:{page.prose.count(chr(10), 0, match.start()) + 1}: link {target}"
        if not dest.exists():
            out.append(f"{where}: no such file {_name(dest)}")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            out.append(f"{where}: {_name(dest)} has no heading with anchor #{anchor}")
    return out


def path_problems(page: Page, root: Path) -> list[str]:
    out = []
    test_modules = {p.name for p in (root / "tests").rglob("test_*.py")}
    for number, text in enumerate(page.lines, start=1):
        for named in _REPO_PATH.findall(text):
            if not (root / named).exists():
                out.append(f"{_name(page.path)}:{number}: path {named} does not exist")
        for module in _TEST_MODULE.findall(text):
            if module not in test_modules:
                out.append(f"{_name(page.path)}:{number}: test module {module} is not under tests/")
    return out


def root_config() -> type:
    """The dataclass `load_config` builds: the root of every config key."""
    from alignjax.train import config

    return typing.get_type_hints(config.load_config)["return"]


def method_sections() -> dict[str, type]:
    from alignjax.train import methods

    return methods.section_types()


def resolves(key: str) -> bool:
    """Whether a dotted key names a field of the training config (or a stage's)."""
    root = root_config()
    parts = key.split(".")
    if parts[0] == "stages" and len(parts) > 1:
        if not parts[1].isdigit():
            return False
        rest = parts[2:]
        return not rest or rest == ["name"] or (rest[0] != "stages" and _resolves(root, rest))
    return _resolves(root, parts)


def _resolves(tp: typing.Any, parts: list[str]) -> bool:
    if not parts:
        return True
    origin = typing.get_origin(tp)
    if tp is typing.Any or tp is dict or origin is dict:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_resolves(arm, parts) for arm in typing.get_args(tp) if arm is not type(None))
    if origin is list:
        return parts[0].isdigit() and _resolves(typing.get_args(tp)[0], parts[1:])
    if not dataclasses.is_dataclass(tp):
        return False
    hints = typing.get_type_hints(tp)
    if tp is hints_of_root("loss"):
        if parts[0] in method_sections():
            return _resolves(method_sections()[parts[0]], parts[1:])
        hints = {k: v for k, v in hints.items() if k != "sections"}
    return parts[0] in hints and _resolves(hints[parts[0]], parts[1:])


def hints_of_root(field: str) -> type:
    return typing.get_type_hints(root_config())[field]


def _root_fields() -> set[str]:
    return {f.name for f in dataclasses.fields(root_config())}


def _key_pattern() -> re.Pattern:
    names = "|".join(sorted(_root_fields(), key=len, reverse=True))
    return re.compile(rf"(?<![\w./<$-])((?:{names})(?:\.(?:[A-Za-z_]\w*|\d+))+)(?![\w/])")


def _override_keys(command: str) -> list[str]:
    """Every key a `key=value` argument sets (a mapping value's keys included)."""
    try:
        tokens = shlex.split(command)
    except ValueError:  # an apostrophe in a trailing comment
        tokens = command.split()
    keys = []
    for token in tokens:
        match = _OVERRIDE.match(token)
        if not match:
            continue
        keys.append(match.group(1))
        try:
            value = yaml.safe_load(match.group(2))
        except yaml.YAMLError:
            continue
        keys.extend(f"{match.group(1)}.{sub}" for sub in _flatten(value))
    return keys


def _flatten(value: typing.Any) -> list[str]:
    if not isinstance(value, dict):
        return []
    out = []
    for k, v in value.items():
        out.append(str(k))
        out.extend(f"{k}.{sub}" for sub in _flatten(v))
    return out


def _commands(page: Page) -> list[tuple[int, str]]:
    """(line number, arguments) of every config-taking command in code; a fenced command's
    backslash-continued lines are joined."""
    out, continued = [], None
    for number, piece in code_pieces(page):
        if continued is not None:
            start, text = continued[0], continued[1] + " " + piece
        else:
            command = _CONFIG_COMMAND.search(piece + " ")
            if not command:
                continue
            start, text = number, piece[command.end() :]
        if number in page.fenced and text.rstrip().endswith("\\"):
            continued = (start, text.rstrip()[:-1])
        else:
            continued = None
            out.append((start, text))
    return out


def _yaml_blocks(page: Page) -> list[tuple[int, list[str]]]:
    """(opening line, keys) of every YAML block whose top-level keys are config sections."""
    blocks: dict[int, list[str]] = {}
    for number, info in page.fenced.items():
        if info not in ("yaml", "yml"):
            continue
        start = next(n for n in range(number, 0, -1) if n - 1 not in page.fenced)
        blocks.setdefault(start, []).append(page.lines[number - 1])
    out = []
    for start, texts in blocks.items():
        try:
            tree = yaml.safe_load("\n".join(t for t in texts if not _FENCE.match(t)))
        except yaml.YAMLError:
            continue
        if isinstance(tree, dict) and set(tree) <= _root_fields():
            out.append((start, _flatten(tree)))
    return out


def key_problems(page: Page) -> list[str]:
    pattern = _key_pattern()
    named = [(number, key) for number, code in code_pieces(page) for key in pattern.findall(code)]
    named += [(number, key) for number, args in _commands(page) for key in _override_keys(args)]
    named += [(number, key) for number, keys in _yaml_blocks(page) for key in keys]
    return [
        f"{_name(page.path)}:{number}: config key {key} is not a field of the training config"
        for number, key in sorted(set(named))
        if not resolves(key)
    ]


def problems(paths: list[Path], root: Path = ROOT) -> list[str]:
    out = []
    for path in paths:
        page = read_page(path)
        out += link_problems(page) + path_problems(page, root) + key_problems(page)
    return out


def _name(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def doc_pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_docs_name_only_what_exists():
    found = problems(doc_pages())
    assert not found, f"{len(found)} broken references in the docs:\n" + "\n".join(found)


def test_readme_is_a_front_page_that_links_every_docs_page():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    index = (ROOT / "docs" / "index.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 200
    # `.ci/run` runs the first fenced block's two lines as a new user would.
    first_block = readme.split("```bash\n", 1)[1].split("```", 1)[0]
    assert first_block == (
        "pip install -e . && alignjax train configs/quickstart.yaml\n"
        'pip install -e ".[test]" && python -m pytest -q -n 2 --dist loadscope\n'
    )
    long_rows = [row[:60] for row in readme.splitlines() if row.startswith("|") and len(row) > 200]
    assert not long_rows, f"README.md table rows over 200 characters: {long_rows}"
    unlisted = [p.name for p in doc_pages()[1:] if p.name != "index.md" and f"({p.name}" not in index]
    assert not unlisted, f"docs/index.md does not link: {', '.join(unlisted)}"


_GOOD = """# Title

## A `code` heading: with punctuation

See [below](#a-code-heading-with-punctuation), [the formulas](methods.md#1-the-dpo-family-losstype-trls-names)
and `configs/quickstart.yaml`; set `loss.kto.loss_type`, `stages.1.optim.lr` or
`logging.wandb.project`, as `test_docs.py` checks.

```bash
alignjax train configs/quickstart.yaml train.steps=3 "model.lora={rank: 4, alpha: 8}" stages.0.data.train=x
```
"""


@pytest.mark.parametrize(
    "line, expected",
    [
        ("A [missing page](nowhere.md).", "link nowhere.md: no such file"),
        ("A [missing anchor](#no-such-heading).", "has no heading with anchor #no-such-heading"),
        ("Run `configs/no_such_recipe.yaml`.", "path configs/no_such_recipe.yaml does not exist"),
        ("Set `loss.betta` higher.", "config key loss.betta is not"),
        ("Set `loss.kto.loss_typo`.", "config key loss.kto.loss_typo is not"),
        ("Set `stages.1.optim.learning_rate`.", "config key stages.1.optim.learning_rate is not"),
        ("`alignjax train configs/quickstart.yaml trian.steps=3`", "config key trian.steps is not"),
        ("`alignjax train configs/quickstart.yaml \"model.lora={rnk: 4}\"`", "config key model.lora.rnk is not"),
        ("```yaml\nmodel:\n  lora: {rank: 4, alpah: 8}\n```", "config key model.lora.alpah is not"),
        ("Checked by `test_no_such_module.py`.", "test module test_no_such_module.py is not"),
    ],
)
def test_a_broken_reference_is_reported_with_its_line(tmp_path, line, expected):
    (tmp_path / "methods.md").write_text((ROOT / "docs" / "methods.md").read_text(encoding="utf-8"))
    page = tmp_path / "page.md"
    page.write_text(_GOOD + "\n" + line + "\n")
    found = problems([page])
    bad_line = _GOOD.count("\n") + 2
    assert len(found) == 1, found
    assert found[0].startswith(f"{page}:{bad_line}: ") and expected in found[0], found


def test_a_page_naming_only_what_exists_passes(tmp_path):
    (tmp_path / "methods.md").write_text((ROOT / "docs" / "methods.md").read_text(encoding="utf-8"))
    page = tmp_path / "page.md"
    page.write_text(_GOOD)
    assert problems([page]) == []
