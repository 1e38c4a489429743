"""Meta-World task names, named task sets and natural-language instructions.

Pure data (no simulator import), so configs can validate task names instantly. Meta-World ships no
instructions; these are ours, one imperative sentence per task in the style of LIBERO's.
"""

from __future__ import annotations

import logging

from policytrim.errors import InputError

log = logging.getLogger(__name__)

INSTRUCTIONS: dict[str, str] = {
    "assembly-v3": "pick up the nut and place it onto the peg",
    "basketball-v3": "pick up the ball and dunk it into the basket",
    "bin-picking-v3": "grasp the puck from one bin and place it into the other bin",
    "box-close-v3": "grasp the lid and close the box with it",
    "button-press-topdown-v3": "press the button from the top",
    "button-press-topdown-wall-v3": "bypass the wall and press the button from the top",
    "button-press-v3": "press the button from the front",
    "button-press-wall-v3": "bypass the wall and press the button from the front",
    "coffee-button-v3": "push the button on the coffee machine",
    "coffee-pull-v3": "pull the mug away from the coffee machine",
    "coffee-push-v3": "push the mug under the coffee machine",
    "dial-turn-v3": "rotate the dial 180 degrees",
    "disassemble-v3": "pick the nut off the peg",
    "door-close-v3": "close the door with a revolving joint",
    "door-lock-v3": "lock the door by rotating the lock clockwise",
    "door-open-v3": "open the door with a revolving joint",
    "door-unlock-v3": "unlock the door by rotating the lock counter-clockwise",
    "drawer-close-v3": "push the drawer closed",
    "drawer-open-v3": "pull the drawer open",
    "faucet-close-v3": "rotate the faucet clockwise to close it",
    "faucet-open-v3": "rotate the faucet counter-clockwise to open it",
    "hammer-v3": "hammer the screw on the wall",
    "hand-insert-v3": "insert the gripper into the hole",
    "handle-press-side-v3": "press the handle down sideways",
    "handle-press-v3": "press the handle down",
    "handle-pull-side-v3": "pull the handle up sideways",
    "handle-pull-v3": "pull the handle up",
    "lever-pull-v3": "pull the lever down 90 degrees",
    "peg-insert-side-v3": "insert the peg sideways into the hole",
    "peg-unplug-side-v3": "unplug the peg sideways",
    "pick-out-of-hole-v3": "pick the puck up out of the hole",
    "pick-place-v3": "pick up the puck and place it at the goal",
    "pick-place-wall-v3": "pick up the puck, bypass the wall and place it at the goal",
    "plate-slide-back-side-v3": "slide the plate sideways back into the cabinet",
    "plate-slide-back-v3": "slide the plate back into the cabinet",
    "plate-slide-side-v3": "slide the plate sideways into the cabinet",
    "plate-slide-v3": "slide the plate into the cabinet",
    "push-back-v3": "push the puck back to the goal",
    "push-v3": "push the puck to the goal",
    "push-wall-v3": "bypass the wall and push the puck to the goal",
    "reach-v3": "reach the goal position",
    "reach-wall-v3": "bypass the wall and reach the goal position",
    "shelf-place-v3": "pick up the puck and place it onto the shelf",
    "soccer-v3": "kick the ball into the goal",
    "stick-pull-v3": "grasp the stick and pull the box with it",
    "stick-push-v3": "grasp the stick and push the box with it",
    "sweep-into-v3": "sweep the puck into the hole",
    "sweep-v3": "sweep the puck off the table",
    "window-close-v3": "push the window closed",
    "window-open-v3": "push the window open",
}

ALL_TASKS: tuple[str, ...] = tuple(sorted(INSTRUCTIONS))

TASK_SETS: dict[str, tuple[str, ...]] = {
    "MW8": (
        "reach-v3",
        "push-v3",
        "pick-place-v3",
        "door-open-v3",
        "drawer-close-v3",
        "button-press-topdown-v3",
        "window-open-v3",
        "drawer-open-v3",
    ),
    "MT10": (
        "reach-v3",
        "push-v3",
        "pick-place-v3",
        "door-open-v3",
        "drawer-open-v3",
        "drawer-close-v3",
        "button-press-topdown-v3",
        "peg-insert-side-v3",
        "window-open-v3",
        "window-close-v3",
    ),
    "MT50": ALL_TASKS,
}


def resolve_tasks(names: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """Expand task names and set names (``MW8``, ``MT10``, ``MT50``; comma-separated strings are
    accepted) into a tuple of unique task names, in order. Unknown names raise InputError listing
    the valid ones; a name given twice (``push-v3 push-v3``, ``MW8 mw8``) raises InputError too (a
    typo more likely than intent). A task also contained in a set given is kept once, with a
    logged warning."""
    if isinstance(names, str):
        names = [names]
    out: list[str] = []
    seen: set[str] = set()
    for name in (part.strip() for item in names for part in item.split(",")):
        if not name:
            continue
        key = name.upper().replace("-", "")
        if key in seen:
            raise InputError(f"task {name!r} is given twice; list each task or task set once")
        seen.add(key)
        if key in TASK_SETS:
            expanded = TASK_SETS[key]
        elif name in INSTRUCTIONS:
            expanded = (name,)
        else:
            raise InputError(
                f"unknown task {name!r}; valid tasks are the Meta-World v3 names "
                f"({', '.join(ALL_TASKS)}) or the sets {', '.join(TASK_SETS)}"
            )
        repeated = [t for t in expanded if t in out]
        if repeated:
            log.warning(
                "tasks: %s given again by %r (a task set overlaps another name): kept once", ", ".join(repeated), name
            )
        out.extend(t for t in expanded if t not in out)
    if not out:
        raise InputError("tasks: at least one task is needed, e.g. push-v3 or MW8")
    return tuple(out)
