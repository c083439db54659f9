"""The worked examples of clevrskills_spec.md sections 6.7-6.10, byte for byte.

Each expected string is copied from the spec; the structured program is built by hand; rendering
must give the spec's bytes and parsing the spec's bytes must give the structured program back.
"""

import pytest

from c2a_jax.codeapi import Actor, Assign, Call, Component, PoseEntry, Var, parse, render

RED, YELLOW_CYL = Actor("red cube"), Actor("yellow cylinder")


def pmp(actor, **kw):
    return Call("pick_move3d_place", (), (("actor", actor),) + tuple(kw.items()))


EXAMPLES = [
    # 6.7 PlaceNextTo (L1 form)
    (
        (
            Assign(
                Var("target_pose"),
                Call(
                    "free_space_next_to",
                    (),
                    (
                        ("actor", RED),
                        ("next_to_actor", YELLOW_CYL),
                        ("direction", (0.0, 1.0, 0.0)),
                        ("description", "left of"),
                    ),
                ),
            ),
            pmp(RED, target_pose=Var("target_pose")),
        ),
        "target_pose = free_space_next_to(actor=get_actor('red cube'), next_to_actor=get_actor('yellow cylinder'), "
        'direction=[0.0, 1.0, 0.0], description="left of")\n'
        "pick_move3d_place(actor=get_actor('red cube'), target_pose=target_pose)",
    ),
    ((Call("done"),), "done()"),
    # 6.8 SingleStack, ReverseStack, StackTopple, and the grid-position form
    (
        (pmp(Actor("red cube"), target_actor=Actor("cyan hexagon")),),
        "pick_move3d_place(actor=get_actor('red cube'), target_actor=get_actor('cyan hexagon'))",
    ),
    (
        (pmp(Actor("white cylinder"), target_actor=Actor("red cube")),),
        "pick_move3d_place(actor=get_actor('white cylinder'), target_actor=get_actor('red cube'))",
    ),
    (
        (pmp(Actor("cyan hexagon"), target_actor=Actor("red cube")),),
        "pick_move3d_place(actor=get_actor('cyan hexagon'), target_actor=get_actor('red cube'))",
    ),
    (
        (Call("topple_structure", ((Actor("cyan hexagon"), Actor("red cube"), Actor("white cylinder")),)),),
        "topple_structure([(get_actor('cyan hexagon')), (get_actor('red cube')), (get_actor('white cylinder'))])",
    ),
    (
        (pmp(Actor("red cube", (4, 6)), target_actor=Actor("cyan hexagon", (7, 5))),),
        "pick_move3d_place(actor=get_actor('red cube', actor_pos=(4, 6)), "
        "target_actor=get_actor('cyan hexagon', actor_pos=(7, 5)))",
    ),
    # 6.9 Swap
    (
        (
            Assign(PoseEntry("yellow cube"), Call("get_pose", (), (("actor", Actor("yellow cube")),))),
            Assign(PoseEntry("blue hexagon"), Call("get_pose", (), (("actor", Actor("blue hexagon")),))),
            pmp(Actor("yellow cube"), target_pose=Call("free_space", (), (("actor", Actor("yellow cube")),))),
        ),
        "pose_dict['yellow cube'] = get_pose(actor=get_actor('yellow cube'))\n"
        "pose_dict['blue hexagon'] = get_pose(actor=get_actor('blue hexagon'))\n"
        "pick_move3d_place(actor=get_actor('yellow cube'), target_pose=free_space(actor=get_actor('yellow cube')))",
    ),
    (
        (
            Assign(PoseEntry("blue hexagon"), Call("get_pose", (), (("actor", Actor("blue hexagon")),))),
            pmp(Actor("blue hexagon"), target_pose=PoseEntry("yellow cube")),
        ),
        "pose_dict['blue hexagon'] = get_pose(actor=get_actor('blue hexagon'))\n"
        "pick_move3d_place(actor=get_actor('blue hexagon'), target_pose=pose_dict['yellow cube'])",
    ),
    (
        (
            Assign(PoseEntry("yellow cube"), Call("get_pose", (), (("actor", Actor("yellow cube")),))),
            pmp(Actor("yellow cube"), target_pose=PoseEntry("blue hexagon")),
        ),
        "pose_dict['yellow cube'] = get_pose(actor=get_actor('yellow cube'))\n"
        "pick_move3d_place(actor=get_actor('yellow cube'), target_pose=pose_dict['blue hexagon'])",
    ),
    # 6.9 variants: Swap-by-pushing and SwapRotate
    (
        (
            Call(
                "push",
                (),
                (
                    ("actor", Actor("yellow cube")),
                    ("target_pose", Call("free_space", (), (("actor", Actor("yellow cube")),))),
                ),
            ),
        ),
        "push(actor=get_actor('yellow cube'), target_pose=free_space(actor=get_actor('yellow cube')))",
    ),
    (
        (
            Assign(
                Var("target_pose"),
                Call(
                    "rotate_z",
                    (
                        Call(
                            "Pose",
                            (Component(PoseEntry("yellow cube"), "p"), Component(PoseEntry("blue hexagon"), "q")),
                        ),
                        -90,
                    ),
                ),
            ),
            pmp(Actor("blue hexagon"), target_pose=Var("target_pose"), match_ori=True),
        ),
        "target_pose = rotate_z(Pose(pose_dict['yellow cube'].p, pose_dict['blue hexagon'].q), -90)\n"
        "pick_move3d_place(actor=get_actor('blue hexagon'), target_pose=target_pose, match_ori=True)",
    ),
    # 6.10 short examples
    ((pmp(Actor("red cube")),), "pick_move3d_place(actor=get_actor('red cube'))"),
    (
        (pmp(Actor("red cube"), target_actor=Actor("green hexagon")),),
        "pick_move3d_place(actor=get_actor('red cube'), target_actor=get_actor('green hexagon'))",
    ),
    ((Call("touch", (), (("actor", RED), ("topple", True))),), "touch(actor=get_actor('red cube'), topple=True)"),
    (
        (Call("touch", (), (("actor", Actor("white triangle")), ("topple", True))),),
        "touch(actor=get_actor('white triangle'), topple=True)",
    ),
    ((Call("touch", (), (("actor", RED), ("push", True))),), "touch(actor=get_actor('red cube'), push=True)"),
    ((Call("touch", (), (("actor", RED),)),), "touch(actor=get_actor('red cube'))"),
    ((Call("push", (), (("actor", RED),)),), "push(actor=get_actor('red cube'))"),
    (
        (
            Assign(Var("target_pose"), Call("rotate_z", (Call("get_pose", (), (("actor", RED),)), 60))),
            pmp(RED, target_pose=Var("target_pose"), match_ori=True),
        ),
        "target_pose = rotate_z(get_pose(actor=get_actor('red cube')), 60)\n"
        "pick_move3d_place(actor=get_actor('red cube'), target_pose=target_pose, match_ori=True)",
    ),
    (
        (
            Assign(Var("target_pose"), Call("rotate_z", (Call("get_pose", (), (("actor", RED),)), -60))),
            pmp(RED, target_pose=Var("target_pose"), match_ori=True),
        ),
        "target_pose = rotate_z(get_pose(actor=get_actor('red cube')), -60)\n"
        "pick_move3d_place(actor=get_actor('red cube'), target_pose=target_pose, match_ori=True)",
    ),
    (
        (Call("hit", (Actor("blue cube"), Actor("red cylinder"))),),
        "hit(get_actor('blue cube'), get_actor('red cylinder'))",
    ),
    (
        (Call("hit", (Actor("blue cube"), Actor("red cylinder")), (("topple_target", True),)),),
        "hit(get_actor('blue cube'), get_actor('red cylinder'), topple_target=True)",
    ),
    # 6.3 call sites with positions: next-to actor and positional actors print the bare tuple
    (
        (
            Assign(
                Var("target_pose"),
                Call(
                    "free_space_next_to",
                    (),
                    (
                        ("actor", Actor("red cube", (3, 5))),
                        ("next_to_actor", Actor("blue cube", (6, 4))),
                        ("direction", (0.0, -1.0, 0.0)),
                        ("description", "right of"),
                    ),
                ),
            ),
            pmp(Actor("red cube", (3, 5)), target_pose=Var("target_pose")),
        ),
        "target_pose = free_space_next_to(actor=get_actor('red cube', actor_pos=(3, 5)), "
        "next_to_actor=get_actor('blue cube', (6, 4)), direction=[0.0, -1.0, 0.0], description=\"right of\")\n"
        "pick_move3d_place(actor=get_actor('red cube', actor_pos=(3, 5)), target_pose=target_pose)",
    ),
    (
        (Call("hit", (Actor("blue cube", (2, 8)), Actor("red cylinder", (-1, -1))), (("target_2d", True),)),),
        "hit(get_actor('blue cube', (2, 8)), get_actor('red cylinder', (-1, -1)), target_2d=True)",
    ),
]


@pytest.mark.parametrize("program,text", EXAMPLES, ids=[t.split("(")[0][:30] for _, t in EXAMPLES])
def test_render_is_byte_exact(program, text):
    assert render(program) == text


@pytest.mark.parametrize("program,text", EXAMPLES, ids=[t.split("(")[0][:30] for _, t in EXAMPLES])
def test_parse_gives_the_structure_back(program, text):
    assert parse(text, "level1") == program


def test_stack_memory_prompt_of_spec_6_8():
    """The human value of SingleStack's third entry ends with the two past key-steps joined by '; '."""
    from c2a_jax.codeapi import MemoryBuffer

    memory = MemoryBuffer()
    memory.update(EXAMPLES[2][1])
    memory.update("# " + EXAMPLES[2][1])  # an intermediate step does not enter memory
    memory.update(EXAMPLES[3][1])
    assert memory.past_actions() == (
        "pick_move3d_place(actor=get_actor('red cube'), target_actor=get_actor('cyan hexagon')); "
        "pick_move3d_place(actor=get_actor('white cylinder'), target_actor=get_actor('red cube'))"
    )


def test_level_restricts_the_vocabulary():
    fine_only = "move3d(actor=get_actor('red cube'), target_actor=get_actor('blue cube'))"
    assert parse(fine_only, "fine")[0].name == "move3d"
    with pytest.raises(ValueError, match="unknown function 'move3d' at level level1"):
        parse(fine_only, "level1")
    with pytest.raises(ValueError, match="unknown function 'pick_move3d_place' at level fine"):
        parse("pick_move3d_place(actor=get_actor('red cube'))", "fine")
