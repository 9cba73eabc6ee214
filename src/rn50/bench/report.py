"""The result of `rn50 bench` as readable tables, or as JSON."""

from __future__ import annotations

import json


def decode_label(mode: str, ahead: int | None) -> str:
    """'gpu, 2 batches ahead' / 'gpu, between steps' / 'cpu': the end-to-end run's mode."""
    if mode != "gpu" or ahead is None:
        return mode
    return f"gpu, {ahead} batches ahead" if ahead > 0 else "gpu, between steps"


def format_report(result: dict) -> str:
    """The readable tables of a run_bench (or reproject) result: images/s of each
    measurement, and the projection's epoch time, run hours and cost where there is one."""
    limit = f"  limited to {result['cores_limit']} cores" if result.get("cores_limit") else ""
    lines = [
        f"device: {result['device']}{limit}  torch {result.get('torch', '?')}  "
        f"load average at start {_load(result.get('load_avg_start'))}, "
        f"at end {_load(result.get('load_avg_end'))}"
    ]
    if result.get("model"):
        lines += [
            "",
            "Model step (synthetic data on the device"
            + (", model.blurpool" if result.get("plan", {}).get("blurpool") else "")
            + "), images/s:",
            f"  {'batch':>5}  {'precision':<9}  {'channels_last':<13}  {'compile':<26}  "
            f"{'img/s':>9}",
        ]
        for r in result["model"]:
            value = f"{r['img_s']:9.1f}" if "img_s" in r else f"  {r['error']}"
            compiled = (r.get("compile_mode") or "on") if r["compile"] else "off"
            lines.append(
                f"  {r['batch_size']:>5}  {r['precision']:<9}  "
                f"{'on' if r['channels_last'] else 'off':<13}  "
                f"{compiled:<26}  {value}"
            )
        t = result.get("step_target")
        if t:
            lines.append(
                f"  fastest: {t['img_s']:.1f} img/s = {t['fraction']:.2f} of the "
                f"{t['target_img_s']:,.0f} img/s target (batch {t['setting']['batch_size']}, "
                f"LR {t['setting']['lr']:g})"
            )
    if result.get("data"):
        vs = {
            (r["mode"], r["workers"]): r["vs_torchvision"]
            for r in result.get("data_vs_torchvision", [])
        }
        lines += [
            "",
            f"Data path alone, {result.get('data_source', '?')}, images/s:",
            f"  {'mode':<12}  {'workers':>7}  {'img/s':>9}  {'per worker':>10}  "
            f"{'vs torchvision':>14}",
        ]
        for r in result["data"]:
            ratio = vs.get((r["mode"], r["workers"]))
            lines.append(
                f"  {r['mode']:<12}  {r['workers']:>7}  {r['img_s']:9.1f}  "
                f"{r['img_s_per_worker']:10.1f}  "
                f"{(f'{ratio:.2f}x' if ratio else '-'):>14}"
            )
    if result.get("end_to_end"):
        e = result["end_to_end"]
        lines += [
            "",
            f"End to end (decode {decode_label(e['decode'], e.get('decode_ahead'))}, "
            f"{e['workers']} worker(s), batch "
            f"{e['batch_size']}, {e['precision']}{', compiled' if e.get('compile') else ''}): "
            f"{e['img_s']:.1f} images/s",
        ]
    if result.get("gpu_stages"):
        g = result["gpu_stages"]
        lines += [
            "",
            f"decode gpu stage by stage ({plural(g['images'], 'image')} in batches of "
            f"{g['batch_size']}, {g.get('resolution', '?')} px, decoder "
            f"{g.get('gpu_decoder', 'torchvision')}, "
            f"{g['device']}); host: the calling thread's share of the time:",
            f"  {'stage':<15}  {'us/image':>9}  {'img/s':>10}  {'host':>5}",
        ]
        if g.get("left_out"):
            lines.insert(-1, f"  ({plural(g['left_out'], 'file')} left out: not for the "
                             "device decoder, the workers decode those)")
        for name, st in g["stages"].items():
            lines.append(
                f"  {name:<15}  {st['us_per_image']:9.1f}  {st['img_s']:10.1f}  "
                f"{st['host_share']:5.2f}"
            )
        lines.append(
            f"  training process (decode to normalize, one after another): "
            f"{g['main_img_s']:.1f} img/s, slowest stage {g['slowest_main_stage']}; "
            f"one worker (read, header, crop draw): {g['worker_img_s']:.1f} img/s; "
            f"a synchronize: {1e6 * g['sync_s']:.1f} us"
        )
        if "place_speedup" in g:
            lines.append(
                f"  the former per-image place and stack instead of place: "
                f"{g['per_image_main_img_s']:.1f} img/s (place is "
                f"{times(g['place_speedup'])} than the former)"
            )
    if result.get("sync"):
        lines += ["", "The step's host wait (train.sync_check), images/s:",
                  f"  {'compile':<7}  {'step':>9}  {'deferred':>9}  {'unchecked':>9}  "
                  f"{'wait costs':>10}  {'deferred costs':>14}"]  # fmt: skip
        for r in result["sync"]:
            if "error" in r:
                lines.append(f"  {'on' if r['compile'] else 'off':<7}  {r['error']}")
                continue
            v = r["img_s"]
            lines.append(
                f"  {'on' if r['compile'] else 'off':<7}  {v['step']:9.1f}  "
                f"{v['deferred']:9.1f}  {v['unchecked']:9.1f}  {100 * r['sync_cost']:9.1f}%  "
                f"{100 * r['deferred_cost']:13.1f}%"
            )
    if result.get("progressive"):
        lines += ["", "Progressive resizing: the best model setting at each lower resolution:"]
        for r in result["progressive"]:
            e2e = r.get("end_to_end_img_s")
            lines.append(
                f"  {r['resolution']:>4} px  model {r['img_s']:9.1f} img/s"
                + (f"  end to end {e2e:9.1f} img/s" if e2e is not None else "")
            )
    if result.get("projection"):
        p = result["projection"]
        if result.get("projected_from"):
            lines += ["", f"Projected from the measurements in {result['projected_from']}."]
        rates = f"data {p['data_img_s']:.1f}, model {p['model_img_s']:.1f}"
        if p.get("end_to_end_img_s") is not None:
            rates += f", end to end {p['end_to_end_img_s']:.1f}"
        lines += [
            "",
            f"ImageNet-1k projection: {p['images_per_epoch']:,} images / min({rates}) img/s "
            f"x {p['gpus']} GPU(s) = {_duration(p['epoch_s'])} per epoch "
            f"({p['bottleneck']} bound); {p['epochs']} epochs = {p['hours']:.1f} h"
            + (
                f" (progressive resizing {min(p['resolutions'])}-{max(p['resolutions'])} px)"
                if p.get("resolutions")
                else ""
            ),
        ]
        if p["price_per_gpu_hour"]:
            lines.append(f"  cost at {p['price_per_gpu_hour']:g}/GPU-hour: {p['cost']:.2f}")
    return "\n".join(lines)


def _load(values) -> str:
    return "/".join(f"{v:.2f}" for v in values) if values else "?"


def _duration(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}h{s % 3600 // 60:02d}m{s % 60:02d}s"


def to_json(result: dict) -> str:
    """`result` as indented JSON text (what --json prints)."""
    return json.dumps(result, indent=1)


def plural(n: int, word: str) -> str:
    """'1 image', '2 images'."""
    return f"{n} {word}{'' if n == 1 else 's'}"


def times(ratio: float) -> str:
    """A speed ratio as words: '3.2x faster', '4.0x slower' (1 / ratio), 'as fast'."""
    if ratio >= 1.05:
        return f"{ratio:.1f}x faster"
    if ratio <= 1 / 1.05:
        return f"{1 / ratio:.1f}x slower"
    return "about as fast"
