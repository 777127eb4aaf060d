"""One set of loss constants: the KL-estimator codes, the clamps and the order of the
statistics vector are the same in Python (algos/policy_loss.py, which the Triton kernels
import) and in the C++/CUDA header csrc/common/token_loss.h."""

import re
from pathlib import Path

from rgpo_fast.algos.policy_loss import K3_CLAMP, KL_CODES, LOG_RATIO_CLAMP, STAT_NAMES

HEADER = (Path(__file__).resolve().parents[1] / "csrc" / "common" / "token_loss.h").read_text()


def test_kl_codes_match_the_header():
    enum = re.search(r"enum KlEstimator : int \{([^}]*)\}", HEADER).group(1)
    codes = {f"k{m.group(1)}": int(m.group(2)) for m in re.finditer(r"kKlK(\d) = (\d)", enum)}
    assert codes == KL_CODES
    assert 0 not in KL_CODES.values()  # 0 means "no KL term" in the Triton kernel


def test_clamps_match_the_header():
    def const(name):
        return float(re.search(rf"constexpr float {name} = ([0-9.]+)f;", HEADER).group(1))

    assert const("kLogRatioClamp") == LOG_RATIO_CLAMP
    assert const("kK3Clamp") == K3_CLAMP


def test_stat_order_matches_the_header():
    enum = re.search(r"enum Stat : int \{([^}]*)\}", HEADER).group(1)
    names = re.findall(r"kStat(\w+?)(?: = 0)?,", enum)

    def snake(camel):
        return re.sub(r"(?<!^)(?=[A-Z])", "_", camel).lower()

    assert [snake(n) for n in names] == list(STAT_NAMES)
