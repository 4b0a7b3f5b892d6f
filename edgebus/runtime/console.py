"""What a cart says on the console before its first frame: failed gates accepted, warnings (a synthetic-data
model), and one line per part (models, fusion, presence rule, site threshold). Used by `edgebus predict`."""

from __future__ import annotations


def cart_lines(pipeline) -> list[str]:
    """The lines of a LesionPipeline, gates and warnings first."""
    lines = [f"warning: {pipeline.gates}"] if "FAILED" in pipeline.gates else []
    lines += [f"WARNING: {w}" for w in pipeline.warnings]  # also in every result row and burned into every overlay
    for role, m in pipeline.describe().items():
        if role == "site":
            lines.append(f"site threshold: {m['threshold']:.4f} (shipped {m['shipped_threshold']:.4f}), chosen on "
                         f"{m['chosen_on']['n']} of this site's cases (edgebus site-threshold)")
        elif role == "presence":
            lines.append(f"presence: {m['file']} ('no lesion found' where the lesion map's evidence is below "
                         f"{m['threshold']:.3f}; at most {m['max_miss']:.0%} of lesion frames missed out of fold)")
        elif role == "fusion":
            words = f"; BI-RADS descriptors measured on the mask: {', '.join(m['descriptors'])}" if m.get("descriptors") else ""
            lines.append(f"fusion: {m['file']} (classifier score + the segmenter's lesion shape, threshold "
                         f"{m['threshold']:.2f}{words})")
        else:
            lines.append(f"{role}: {m['file']} ({m['format']}, {m['input_size'][0]}x{m['input_size'][1]}, "
                         f"threshold {m['threshold']:.2f})")
    return lines
