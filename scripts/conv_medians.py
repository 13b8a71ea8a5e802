"""Reads the median lines of `QuantSharp.Bench conv ... custom` with CONV_PAIR (bench/QuantSharp.Bench/ConvBench.cs), for
scripts/conv-pairs.sh and scripts/conv-ab.sh. Python 3, standard library only."""
import re

MEDIAN = re.compile(r'(.*) batch (\d+) (\S+): median ([\d.]+) us per call')


def medians(path):
    """Each median line of the output file at `path`, in order: ((layer, batch), variant, microseconds a call)."""
    for line in open(path):
        m = MEDIAN.match(line)
        if m:
            yield (m.group(1), int(m.group(2))), m.group(3), float(m.group(4))
