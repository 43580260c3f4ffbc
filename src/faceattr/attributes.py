"""Attribute names: the 40 CelebA attributes in official file order, WFLW's 6 flags."""

from __future__ import annotations

from collections.abc import Sequence

from faceattr.errors import unknown_name_error

CELEBA_ATTRIBUTES: tuple[str, ...] = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs",
    "Big_Lips", "Big_Nose", "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair",
    "Bushy_Eyebrows", "Chubby", "Double_Chin", "Eyeglasses", "Goatee", "Gray_Hair",
    "Heavy_Makeup", "High_Cheekbones", "Male", "Mouth_Slightly_Open", "Mustache",
    "Narrow_Eyes", "No_Beard", "Oval_Face", "Pale_Skin", "Pointy_Nose", "Receding_Hairline",
    "Rosy_Cheeks", "Sideburns", "Smiling", "Straight_Hair", "Wavy_Hair", "Wearing_Earrings",
    "Wearing_Hat", "Wearing_Lipstick", "Wearing_Necklace", "Wearing_Necktie", "Young",
)  # fmt: skip

# WFLW's six per-face flags, in annotation-line order.
WFLW_ATTRIBUTES: tuple[str, ...] = (
    "Pose", "Expression", "Illumination", "Make_Up", "Occlusion", "Blur",
)  # fmt: skip

# Loose groups, used by reports and `data stats` to order and colour attributes.
ATTRIBUTE_GROUPS: dict[str, tuple[str, ...]] = {
    "hair": ("Bald", "Bangs", "Black_Hair", "Blond_Hair", "Brown_Hair", "Gray_Hair",
             "Receding_Hairline", "Straight_Hair", "Wavy_Hair"),
    "beard": ("5_o_Clock_Shadow", "Goatee", "Mustache", "No_Beard", "Sideburns"),
    "face": ("Arched_Eyebrows", "Bags_Under_Eyes", "Big_Lips", "Big_Nose", "Bushy_Eyebrows",
             "Chubby", "Double_Chin", "High_Cheekbones", "Narrow_Eyes", "Oval_Face",
             "Pale_Skin", "Pointy_Nose", "Rosy_Cheeks"),
    "expression": ("Mouth_Slightly_Open", "Smiling"),
    "accessories": ("Eyeglasses", "Heavy_Makeup", "Wearing_Earrings", "Wearing_Hat",
                    "Wearing_Lipstick", "Wearing_Necklace", "Wearing_Necktie"),
    "global": ("Attractive", "Blurry", "Male", "Young"),
}  # fmt: skip


def display_order(attributes: Sequence[str]) -> list[str]:
    """The order attributes are shown in where related ones should sit together (the
    correlation heatmaps of ``data stats --plot`` and of the report): CelebA's attributes by
    :data:`ATTRIBUTE_GROUPS` (hair, beard, face, ...), then any other names in their own
    order."""
    grouped = [a for group in ATTRIBUTE_GROUPS.values() for a in group if a in attributes]
    return grouped + [a for a in attributes if a not in grouped]


def parse_attribute_list(text: str | Sequence[str] | None) -> list[str] | None:
    """Split ``"Male, Smiling"`` (or a list of such strings) into names; None stays None."""
    if text is None:
        return None
    parts = [text] if isinstance(text, str) else list(text)
    names = [p.strip() for part in parts for p in part.split(",") if p.strip()]
    return names or None


def resolve_attributes(requested: Sequence[str] | None, available: Sequence[str]) -> list[str]:
    """Map requested names onto ``available`` case-insensitively, keeping the request's order.

    ``None`` means all available attributes. Unknown names raise a
    :class:`~faceattr.errors.UsageError` naming the closest valid names; duplicates are
    dropped.
    """
    if requested is None:
        return list(available)
    by_lower = {a.lower(): a for a in available}
    out: list[str] = []
    for name in requested:
        found = by_lower.get(name.strip().lower())
        if found is None:
            raise unknown_name_error("attribute", name, available)
        if found not in out:
            out.append(found)
    if not out:
        raise unknown_name_error("attribute", "", available)
    return out
