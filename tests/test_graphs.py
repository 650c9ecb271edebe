"""Block graphs: nested residual/parallel/repeat blocks are checked before anything runs (errors
name the block's path), their predicted shapes equal the forward pass, their receptive fields
equal the hand computation; torchvision reference nets adapt to the data."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from torch import nn

from cnnexp.analysis.health import conv_blocks
from cnnexp.analysis.receptive_field import receptive_fields
from cnnexp.errors import ConfigError
from cnnexp.models.graph import BLOCKS, build_net, parse_blocks, plan_net
from cnnexp.models.reference import torchvision_net
from tests.conftest import FAST, all_runs, block_shapes, cli_in_process, store

C3 = {"conv": 3, "channels": 8}
BAD = [
    ([{"conv": 0, "channels": 8}], "model.blocks[0].conv: 0 is not allowed"),
    ([{"conv": 4, "channels": 8}], "model.blocks[0].conv: kernel 4 is even"),
    ([{"conv": 3, "channels": 0}], "model.blocks[0].channels: 0 is not allowed"),
    ([{"conv": 3}], "model.blocks[0].channels: missing"),
    ([{"conv": 3, "channels": 8, "kernel": 3}], "model.blocks[0].kernel: unknown key"),
    ([{"pool": "median"}], "model.blocks[0].pool: 'median' is not allowed (allowed: max, avg)"),
    ([{"dropout": 1.5}], "model.blocks[0].dropout"),
    ([{"conv": 3, "channels": 4}, *[{"pool": "max"}] * 4], "model.blocks[4]: shrinks"),
    ([{"conv": 3, "channels": 4, "padding": -1}], "model.blocks[0].padding"),
    ([{"pool": "max"}], "model.blocks: no conv block"),
    ([], "model.blocks: empty"),
    ([C3, {"pool": "max", "size": 2, "padding": 2}], "model.blocks[1].padding: 2 is more than"),
    ([C3, {"repeat": 0, "blocks": [C3]}], "model.blocks[1].repeat: 0 is not allowed"),
    ([C3, {"repeat": 2, "blocks": []}], "model.blocks[1].blocks: empty"),
    ([C3, {"parallel": []}], "model.blocks[1].parallel: empty"),
    ([C3, {"parallel": [[C3], []]}], "model.blocks[1].parallel[1]: empty"),
    ([C3, {"parallel": [[C3], C3]}], "model.blocks[1].parallel[1]: {'conv': 3"),
    (
        [C3, {"parallel": [[C3], [{"conv": 3, "channels": 8, "stride": 2, "padding": 1}]]}],
        "model.blocks[1].parallel[1]: output 4x4 differs from branch 0's 8x8",
    ),
    (
        [C3, {"parallel": [[C3], [{"conv": 3, "channels": 8, "stride": 1, "strid": 2}]]}],
        "model.blocks[1].parallel[1][0].strid: unknown key (did you mean "
        "model.blocks[1].parallel[1][0].stride?",
    ),
    ([C3, {"conv": 3, "channels": 12, "groups": 3}], "model.blocks[1].groups: 3 does not divide"),
    ([C3, {"conv": 3, "channels": 8, "groups": 16}], "model.blocks[1].groups: 16 does not divide"),
    (
        [{"conv": 3, "channels": 8, "activation": "relu6"}],
        "model.blocks[0].activation: 'relu6' is not allowed",
    ),
    ([C3, {"residual": [{"conv": 3, "channels": 8, "padding": 0}]}], "model.blocks[1].residual: "),
    ([C3, {"residual": [C3], "activaton": "none"}], "model.blocks[1].activaton: unknown key"),
    (
        [
            C3,
            {"repeat": 2, "blocks": [{"residual": [{"parallel": [[{"conv": 2, "channels": 1}]]}]}]},
        ],
        "model.blocks[1].blocks[0].residual[0].parallel[0][0].conv: kernel 2 is even",
    ),
]


@pytest.mark.parametrize(("blocks", "message"), BAD)
def test_bad_graphs_name_the_block(blocks: list, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        plan_net(parse_blocks(blocks), (1, 8, 8))


def test_the_issue_example_plans_builds_and_names_every_conv() -> None:
    blocks = [
        {"conv": 3, "channels": 16},
        {
            "residual": [
                {"conv": 3, "channels": 16},
                {"conv": 3, "channels": 16, "activation": "none"},
            ]
        },
        {
            "parallel": [
                [{"conv": 1, "channels": 8}],
                [{"conv": 1, "channels": 8}, {"conv": 5, "channels": 8}],
                [{"pool": "max", "size": 3, "stride": 1, "padding": 1}, {"conv": 1, "channels": 8}],
            ]
        },
        {"conv": 3, "channels": 24, "groups": 24},
        {"repeat": 2, "blocks": [{"conv": 3, "channels": 24}]},
    ]
    plan = plan_net(parse_blocks(blocks), (1, 28, 28))
    net = build_net(plan, 10, "gap", None)
    assert net(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    assert list(conv_blocks(net)) == [f"conv{i}" for i in range(1, 11)]
    depthwise = conv_blocks(net)["conv8"].conv
    assert depthwise.groups == 24 and depthwise.weight.shape == (24, 1, 3, 3)
    assert conv_blocks(net)["conv9"] is not conv_blocks(net)["conv10"]  # repeats: own weights
    assert not hasattr(conv_blocks(net)["conv3"], "act")  # activation: none
    paths = {n.name: n.path for n in plan.walk()}
    assert paths["conv6"] == "model.blocks[2].parallel[1][1]"
    assert paths["conv9"] == paths["conv10"] == "model.blocks[4].blocks[0]"
    assert plan.out_shape == (24, 28, 28)


def test_residual_projects_its_shortcut_when_the_body_changes_shape() -> None:
    body = [{"conv": 3, "channels": 16, "stride": 2, "padding": 1}, {"conv": 3, "channels": 16}]
    plan = plan_net(parse_blocks([C3, {"residual": body}]), (1, 9, 9))
    [res] = [n for n in plan.nodes if n.name == "res1"]
    assert res.out_shape == (16, 5, 5) and res.projection.stride == 2
    net = build_net(plan, 3, "gap", None)
    shortcut = net.features.res1.shortcut
    assert shortcut.conv.kernel_size == (1, 1) and shortcut.conv.stride == (2, 2)
    assert isinstance(plan_identity_shortcut(), nn.Identity)


def plan_identity_shortcut() -> nn.Module:
    plan = plan_net(parse_blocks([C3, {"residual": [C3, C3]}]), (1, 8, 8))
    return build_net(plan, 3, "gap", None).features.res1.shortcut


def test_width_multiplies_channels_and_keeps_depthwise() -> None:
    blocks = [{"conv": 3, "channels": 8}, {"conv": 3, "channels": 8, "groups": 8}]
    plan = plan_net(parse_blocks(blocks), (1, 8, 8), width=0.5)
    convs = [n.block for n in plan.walk()]
    assert [(c.channels, c.groups) for c in convs] == [(4, 1), (4, 4)]


# ---- receptive fields of each new block kind, by hand: r = r_prev + (k - 1) * S_prev ----
def rf_of(blocks: list, shape=(1, 16, 16)) -> dict[str, int]:
    net = build_net(plan_net(parse_blocks(blocks), shape), 2, "gap", None)
    return {row.name: row.size for row in receptive_fields(net, shape)}


def test_receptive_field_of_a_residual_is_its_body_s() -> None:
    rf = rf_of([C3, {"residual": [C3, C3]}])  # 3, then the body adds 2 + 2; shortcut sees 3
    assert rf["features.res1.shortcut"] == 3 and rf["features.res1.act"] == 7


def test_receptive_field_of_a_strided_residual() -> None:
    body = [{"conv": 3, "channels": 8, "stride": 2, "padding": 1}, C3]  # 3 -> 5 (S 2) -> 9
    rf = rf_of([C3, {"residual": body}])
    assert rf["features.res1.shortcut.conv"] == 3 and rf["features.res1.act"] == 9


def test_receptive_field_of_a_parallel_block_is_its_largest_branch_s() -> None:
    branches = [
        [{"conv": 1, "channels": 4}],  # 3
        [{"conv": 1, "channels": 4}, {"conv": 5, "channels": 4}],  # 3 + 4 = 7
        [{"pool": "max", "size": 3, "stride": 1, "padding": 1}, {"conv": 1, "channels": 4}],  # 5
    ]
    assert rf_of([C3, {"parallel": branches}])["features.par1.out"] == 7


def test_receptive_field_of_depthwise_and_repeat() -> None:
    rf = rf_of([C3, {"repeat": 3, "blocks": [{"conv": 3, "channels": 8, "groups": 8}]}])
    assert rf["features.conv4.conv"] == 3 + 3 * 2


# ---- property: random graphs; valid ones match the forward pass, broken ones name a path ----
def leaf() -> st.SearchStrategy:
    conv = st.builds(
        lambda k, c, s, g: (
            {"conv": k, "channels": c * g, "groups": g}
            | ({"stride": s, "padding": k // 2} if s > 1 else {})
        ),
        st.sampled_from([1, 3, 5]),
        st.integers(1, 3),
        st.integers(1, 3),
        st.sampled_from([1, 1, 2]),
    )
    pool = st.builds(
        lambda kind, size, pad: {"pool": kind, "size": size, "padding": min(pad, size // 2)},
        st.sampled_from(["max", "avg"]),
        st.integers(1, 3),
        st.integers(0, 1),
    )
    return st.one_of(conv, conv, pool)


def nest(children: st.SearchStrategy) -> st.SearchStrategy:
    lists = st.lists(children, min_size=1, max_size=3)
    return st.one_of(
        st.builds(lambda body: {"residual": body}, lists),
        st.builds(lambda bs: {"parallel": bs}, st.lists(lists, min_size=1, max_size=3)),
        st.builds(lambda n, body: {"repeat": n, "blocks": body}, st.integers(1, 2), lists),
    )


graphs = st.lists(st.recursive(leaf(), nest, max_leaves=8), min_size=1, max_size=4)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(graphs, st.integers(4, 12), st.integers(1, 2))
def test_random_graphs_plan_what_torch_computes(raw: list, side: int, channels: int) -> None:
    try:
        plan = plan_net(parse_blocks(raw), (channels, side, side), batch_norm=False)
    except ConfigError as err:
        assert_path_exists(str(err), raw)
        return
    net = build_net(plan, 3, "gap", None)
    predicted = {node.name: node.out_shape for node in plan.walk()}
    shapes, _ = block_shapes(net, predicted, torch.zeros(2, channels, side, side))
    assert shapes == predicted


BREAKS = [  # (how a valid block is broken, what kind of error it must give)
    (lambda b: b | {"colour": 1}, "unknown key"),
    (lambda b: b | {"repeat": 0, "blocks": [C3]} if "repeat" in b else b | {"dropout": 0.1}, ""),
    (lambda b: {"conv": 3, "channels": 5, "groups": 2}, "groups"),
    (lambda b: {"parallel": []}, "empty"),
    (lambda b: {"pool": "max", "size": 2, "padding": 3}, "padding"),
]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(graphs, st.sampled_from(BREAKS), st.data())
def test_broken_graphs_name_the_broken_block(raw: list, brk, data) -> None:
    """One block anywhere in a valid graph is broken: the error starts with that block's path."""
    try:
        plan_net(parse_blocks(raw), (2, 12, 12))
    except ConfigError:
        assume(False)
    container, index, path = data.draw(st.sampled_from(list(block_slots(raw))))
    change, kind = brk
    container[index] = change(dict(container[index]))
    with pytest.raises(ConfigError) as err:
        plan_net(parse_blocks(raw), (2, 12, 12))
    assert kind in str(err.value)
    assert re.match(re.escape(path) + r"[.:]", str(err.value)), (path, str(err.value))
    assert_path_exists(str(err.value), raw)


def block_slots(blocks: list, where: str = "model.blocks"):
    """(list, index, path) of every block of a raw graph, nested ones too."""
    for i, block in enumerate(blocks):
        path = f"{where}[{i}]"
        yield blocks, i, path
        if "residual" in block:
            yield from block_slots(block["residual"], f"{path}.residual")
        if "blocks" in block:
            yield from block_slots(block["blocks"], f"{path}.blocks")
        for b, branch in enumerate(block.get("parallel", [])):
            yield from block_slots(branch, f"{path}.parallel[{b}]")


def assert_path_exists(message: str, raw: list) -> None:
    """The `model.blocks[..]...` the message starts with leads to something in `raw`: a block,
    a list, or a key of a block (written, or a field of its kind with a default)."""
    path = message.split(":", 1)[0]
    assert path.startswith("model.blocks"), message
    node: object = raw
    for part in re.findall(r"\[(\d+)\]|\.(\w+)", path.removeprefix("model.blocks")):
        index, key = part
        if index:
            assert isinstance(node, list) and int(index) < len(node), message
            node = node[int(index)]
        else:
            assert isinstance(node, dict), message
            kind = next((BLOCKS[k] for k in BLOCKS if k in node), None)
            fields = {f for f in kind.__dataclass_fields__} if kind else set()
            assert key in node or key in fields, message
            node = node.get(key)


# ---- torchvision reference nets ----
@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v3_small", "efficientnet_b0"])
def test_torchvision_net_adapts_to_grey_28px_and_trains(arch: str) -> None:
    net = torchvision_net(arch, (1, 28, 28), 10)
    x = torch.randn(4, 1, 28, 28)
    loss = nn.functional.cross_entropy(net(x), torch.arange(4))
    assert net(x).shape == (4, 10) and torch.isfinite(loss)
    loss.backward()
    missing = [n for n, p in net.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing
    assert len(conv_blocks(net)) > 5  # the analysis sees every conv


def test_torchvision_arch_too_large_for_the_input_is_one_line() -> None:
    with pytest.raises(ConfigError, match=r"^model.arch: vit_b_16 cannot take 1x28x28 inputs"):
        torchvision_net("vit_b_16", (1, 28, 28), 10)
    with pytest.raises(ConfigError, match="model.arch: unknown value 'resnet19'.*did you mean"):
        torchvision_net("resnet19", (1, 28, 28), 10)


# ---- end to end, through the CLI ----
GRAPH = (
    "model.blocks=[{conv:3,channels:4},{residual:[{conv:3,channels:4},"
    "{conv:3,channels:4,activation:none}]},{parallel:[[{conv:1,channels:2}],"
    "[{pool:max,size:3,stride:1,padding:1},{conv:3,channels:2}]]}]"
)


def test_cli_bad_nested_block_is_one_line_and_opens_no_run(out) -> None:
    bad = GRAPH.replace("{conv:3,channels:2}", "{conv:3,channels:2,strid:2}")
    result = cli_in_process("model=tiny", "data=digits", bad, out=out)
    assert result.returncode == 2
    assert result.stderr == (
        "cnnexp: error: model.blocks[2].parallel[1][1].strid: unknown key (did you mean "
        "model.blocks[2].parallel[1][1].stride?; allowed: activation, batch_norm, bias, "
        "channels, conv, dilation, groups, padding, stride)\n"
    )
    assert not all_runs(out)


@pytest.mark.slow
def test_graph_run_is_analysed_per_conv_and_pictured(out) -> None:
    result = cli_in_process(
        "model=tiny", "data=digits", GRAPH, *FAST, "data.train_size=200", out=out
    )
    assert result.returncode == 0, result.stderr[-3000:]
    [run] = all_runs(out)
    client, run_id = store(out), run.info.run_id
    paths = {a.path for a in client.list_artifacts(run_id)}
    assert "architecture.png" in paths
    images = {a.path.split("+")[0] for a in client.list_artifacts(run_id, "images")}
    convs = [f"conv{i}" for i in range(1, 6)]  # stem, residual body (2), branches (2)
    assert {f"images/feature_maps~{c}" for c in convs} <= images
    assert all(f"health/{c}/mean" in run.data.metrics for c in convs)
    assert (
        run.data.metrics["receptive_field"] == 11
    )  # 3; body +2 +2 = 7; widest branch: pool +2, conv +2
    text = client.download_artifacts(run_id, "receptive_field.txt", str(out))
    assert "features.par1.out" in Path(text).read_text()


@pytest.mark.slow
def test_torchvision_reference_trains_and_is_analysed(out) -> None:
    args = ("model=torchvision", "model.arch=resnet18", "data=digits", "data.train_size=100")
    small = ("analysis.max_channels=4", "analysis.top_k=2", "analysis.patch_images=64")
    result = cli_in_process(*args, *small, *FAST, out=out)  # every analysis, of 4 channels a layer
    assert result.returncode == 0, result.stderr[-3000:]
    [run] = all_runs(out)
    assert run.info.run_name == "resnet18-builtin-digits" and run.info.status == "FINISHED"
    assert run.data.params["model.arch"] == "resnet18"
    assert run.data.metrics["n_params"] == 11_175_370  # 1 input channel, 10 classes
    assert "health/layer4.1.conv2/mean" in run.data.metrics
    assert "architecture.png" in {a.path for a in store(out).list_artifacts(run.info.run_id)}


def test_architecture_picture_has_a_box_per_block_with_shape_params_and_rf() -> None:
    from cnnexp.analysis.architecture import architecture_figure

    raw = [
        C3,
        {"residual": [C3, C3]},
        {"parallel": [[C3], [{"pool": "max", "size": 3, "stride": 1, "padding": 1}, C3]]},
    ]
    plan = plan_net(parse_blocks(raw), (1, 8, 8))
    net = build_net(plan, 2, "gap", None)
    fig = architecture_figure(net, (1, 8, 8), plan, "example")
    texts = [t.get_text() for t in fig.axes[0].texts]
    for node in plan.walk():
        assert any(t.startswith(f"{node.name} ") for t in texts), node.name
    assert "8×8×8  ·  592 params  ·  RF 5" in texts  # conv2: 8·8·9 weights + BN 2·8; 3 + 2
    assert "identity" in texts and "concatenate channels" in texts
    # the parallel block: two such convs; RF 7 after the residual, widest branch pool + conv: 11
    assert "16×8×8  ·  1,184 params  ·  RF 11" in texts
