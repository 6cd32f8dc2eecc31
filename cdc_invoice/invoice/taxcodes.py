"""What a tax classification code (税收分类编码) says about the invoice it may go on.

Special businesses (特定业务 / 特定要素): the bureau's 乐企 基础版 capability document (V4.000,
2.2.4.1 合规性校验) says of the basic invoice "特定要素，选填，必须为空": an ordinary 数电 invoice
carries no special element, and cdc-invoice sends none (Nuonuo ``specificFactor`` stays "0"). Which
code belongs to which special business is a column of the bureau's code table (``tdyslxdm``
特定要素标签归类, 查询税收分类编码, same document), which only the platform has; the prefixes
below are the ones the bureau's documents name, each with its source. Until a special business is
supported, an order with such a code is refused before it reaches the platform, with the reason.
A code the list misses is refused by the platform instead (its answer fails the order with the
platform's message): safe, only later. docs/platform-assumptions.md lists this as an assumption.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Final


@dataclass(frozen=True, slots=True)
class SpecialBusiness:
    kind: str  # 特定要素 name
    factor: str  # Nuonuo specificFactor / 乐企 tdys code
    source: str  # where the code range is written


def _range(low: str, high: str) -> tuple[str, str]:
    return low, high


# (prefix, business): the longest matching prefix wins.
_PREFIXES: Final[tuple[tuple[str, SpecialBusiness], ...]] = (
    # 成品油 codes 1070101…: "1070101020100000000航空煤油、1070101040200000000燃料油定点直供、
    # 1070101050200000000石脑油定点直供" (乐企 成品油 V2.011); 10701 01 is 成品油 in the code table.
    ("1070101", SpecialBusiness("成品油", "1", "乐企（成品油）开票能力说明文档 V2.011")),
    # 稀土: "稀土矿产品：102040303开头的商品编码；稀土冶炼分离产品：107020304开头；稀土金属及合金：
    # 108031202开头、108031203开头、1080314030200000000至1080314031400000000；稀土产品加工费：
    # 2010100000000000000和2010600000000000000" (乐企 稀土 V2.010). The last two are handled below.
    ("102040303", SpecialBusiness("稀土", "2", "乐企（稀土）开票能力说明文档 V2.010")),
    ("107020304", SpecialBusiness("稀土", "2", "乐企（稀土）开票能力说明文档 V2.010")),
    ("108031202", SpecialBusiness("稀土", "2", "乐企（稀土）开票能力说明文档 V2.010")),
    ("108031203", SpecialBusiness("稀土", "2", "乐企（稀土）开票能力说明文档 V2.010")),
    # 建筑服务 305…: the 建筑服务 document's example line is 3050300000000000000 *建筑服务*修缮服务.
    ("305", SpecialBusiness("建筑服务", "3", "乐企（建筑服务）开票能力说明文档 V3.003")),
    # 货物运输服务: the document's example line is 3019902000000000000 *运输服务*其他货物运输.
    ("3019902", SpecialBusiness("货物运输服务", "4", "乐企（货物运输）开票能力说明文档 V3.010")),
    # 不动产销售: class 5 of the code table is 销售不动产; the 基础版 V4.000 table lists
    # 5010102…/5010199…/5010202…/5010299…/5019900…/5020000…/5030000… as 不动产.
    ("5", SpecialBusiness("不动产销售", "5", "乐企（不动产销售）开票能力说明文档 V2.011")),
    # 不动产经营租赁 304050202…: "3040502020102000000个人出租住房", "3040502020200000000"
    # 停车费 (乐企 不动产经营租赁 V3.014); 通行费 3040502020301000000/…399… fall under it too.
    (
        "304050202",
        SpecialBusiness("不动产经营租赁服务", "6", "乐企（不动产经营租赁）开票能力说明文档 V3.014"),
    ),
)
_RARE_EARTH_CODES: Final = frozenset({"2010100000000000000", "2010600000000000000"})
_RARE_EARTH_RANGE: Final = _range("1080314030200000000", "1080314031400000000")
_RARE_EARTH: Final = SpecialBusiness("稀土", "2", "乐企（稀土）开票能力说明文档 V2.010")

# 汇总项 codes the 基础版 document allows, with the rate it requires (2.2.4.3 业务校验规则, for
# telecom companies, 行业代码 63…): "使用3030100000000000000（基础电信服务）开票时，税率必须为9%"，
# "使用3030200000000000000（增值电信服务）开具发票时，税率必须为6%"，"使用3030000000000000000
# （电信服务）汇总项开具发票时，税率必须为0%，优惠政策标识必须为'04 不征税'…只能开具增值税普通发票".
TELECOM_SUMMARY_RATES: Final = {
    "3030100000000000000": Decimal("0.09"),
    "3030200000000000000": Decimal("0.06"),
    "3030000000000000000": Decimal(0),
}


def special_business(code: str) -> SpecialBusiness | None:
    """The special business a tax code belongs to, or None for an ordinary one."""
    if code in _RARE_EARTH_CODES or _RARE_EARTH_RANGE[0] <= code <= _RARE_EARTH_RANGE[1]:
        return _RARE_EARTH
    best: tuple[str, SpecialBusiness] | None = None
    for prefix, business in _PREFIXES:
        if code.startswith(prefix) and (best is None or len(prefix) > len(best[0])):
            best = (prefix, business)
    return best[1] if best else None
