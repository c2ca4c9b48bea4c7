"""Method families: which kind of method a table row or plotted point is, and how plots draw each kind.

A reader compares within and across families (is the lottery ticket better than the personalised baseline? than
FedAvg with a compressed uplink?), so every plot gives a family one marker and line style and every method its
own colour. A row's family comes from the strategy it runs, looked up through the record's variants (a
`{name: fedavg, label: fedavg-q8, comm: {uplink: ...}}` entry is FedAvg with a compressed uplink).
"""
from __future__ import annotations

FAMILIES = {  # strategy name -> family
    "fedavg": "dense", "fedbn": "dense",
    "local": "local",
    "fedper": "personalised", "fedrep": "personalised", "fedbabu": "personalised", "ditto": "personalised",
    "lotteryfl": "lottery ticket", "fedltn": "lottery ticket", "cell": "lottery ticket",
    "fedselect": "lottery ticket",
    "flash-spdst": "sparse training", "flash-jmwst": "sparse training", "hetero-flash": "sparse training",
    "feddst": "sparse training", "fedspa": "sparse training", "dispfl": "sparse training",
    "fedpm": "supermask",
}
COMPRESSED = "compressed uplink"
OTHER = "other"
HUES = {  # family -> a matplotlib sequential colour map: its methods are shades of one hue
    "dense": "Blues", "local": "Greys", "personalised": "Greens", "lottery ticket": "Reds",
    "sparse training": "Purples", "supermask": "RdPu", COMPRESSED: "Oranges", OTHER: "cividis",
}
STYLES = {  # family -> (marker, line style)
    "dense": ("o", "-"), "local": ("*", "--"), "personalised": ("s", "-."), "lottery ticket": ("^", "-"),
    "sparse training": ("D", ":"), "supermask": ("P", ":"), COMPRESSED: ("v", "--"), OTHER: ("X", ":"),
}


def variants(config: dict) -> dict[str, dict]:
    """label -> the variant mapping of every `strategies` entry written as one, in a record's config."""
    return {v.get("label") or v["name"]: v for v in config.get("strategies", []) if isinstance(v, dict)}


def family(label: str, config: dict) -> str:
    """The family of the row called `label` in a run with `config` (as summary.json records it)."""
    variant = variants(config).get(label)
    if variant is not None and variant.get("comm", {}).get("uplink"):
        return COMPRESSED
    name = variant["name"] if variant is not None else label
    return FAMILIES.get(name, OTHER)


def style(label: str, config: dict) -> tuple[str, str]:
    """(marker, line style) for the row called `label`."""
    return STYLES[family(label, config)]


def palette(labels: list[str], config: dict) -> dict[str, tuple]:
    """label -> colour: each family's methods are evenly spaced dark-to-mid shades of the family's hue, so a
    colour says the family and, with the point's name beside it, the method."""
    import matplotlib

    members: dict[str, list[str]] = {}
    for label in labels:
        members.setdefault(family(label, config), []).append(label)
    colours = {}
    for fam, names in members.items():
        cmap = matplotlib.colormaps[HUES[fam]]
        shades = [0.9] if len(names) == 1 else [0.95 - 0.5 * i / (len(names) - 1) for i in range(len(names))]
        colours.update({name: cmap(shade) for name, shade in zip(names, shades)})
    return colours
