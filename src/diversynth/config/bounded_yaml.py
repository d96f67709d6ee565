"""YAML read with a bound on what aliases expand to.

PyYAML's safe loader builds an alias as a second reference to the same object, so nine
aliases of nine aliases of a list (a "billion laughs") cost little to load; it is what
reads the result afterwards (validation copies each reference, an error message prints
each) that takes gigabytes. The document's node graph is measured as if every alias were
written out before anything is built from it.
"""

from __future__ import annotations

from typing import Any

import yaml

from diversynth.errors import UsageError

# Values (scalars, lists, mappings) of a document with its aliases written out: a config
# listing 21,843 classes with descriptions has about 100,000
MAX_VALUES = 1_000_000


# libyaml's parser where PyYAML was built with it (5x faster); the same safe constructor
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class YamlError(UsageError, ValueError):
    """YAML that is not valid, or expands beyond MAX_VALUES."""


def _expanded_size(root: yaml.Node, limit: int) -> int:
    """Values of the node graph counted with every alias written out (each shared node's
    count is computed once), stopping once past `limit`."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()  # entered, children not counted yet
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:  # depth-first, children before parents, without recursion
        node, children_done = stack.pop()
        if id(node) in sizes:
            continue
        if not children_done and id(node) in open_nodes:
            return limit + 1  # an alias inside what it names: endless when written out
        if isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        elif isinstance(node, yaml.MappingNode):
            children = [part for pair in node.value for part in pair]
        else:
            sizes[id(node)] = 1
            continue
        if not children_done:
            open_nodes.add(id(node))
            stack.append((node, True))
            stack.extend((child, False) for child in children if id(child) not in sizes)
            continue
        sizes[id(node)] = min(limit + 1, 1 + sum(sizes.get(id(c), 0) for c in children))
    return sizes[id(root)]


def load_yaml(text: str, what: str, limit: int = MAX_VALUES) -> Any:
    """The YAML document in `text` (None when empty); `what` names it in errors."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if _expanded_size(node, limit) > limit:
            raise YamlError(
                f"{what}: the YAML expands to more than {limit:,} values (its aliases, "
                "*name, repeat what &name marks): write the values out, or use fewer aliases"
            )
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        problem = " ".join(str(exc).split())[:300]
        raise YamlError(f"{what}: not valid YAML: {problem}") from None
    finally:
        loader.dispose()
