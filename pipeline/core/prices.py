"""What an hour on each GPU class (queue) costs: the user's own price table, `ALIGNLAB_HOME/prices.yaml`.

RunPod's prices are the user's to enter (`alignlab prices set gpu 0.79`, or the file itself). The recorder charges
each stage attempt at the price in force when it ends (the ledger), and Launch forecasts a run's cost from earlier
runs' recorded times at today's prices.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from pipeline.core.configs import QUEUE_NAMES
from pipeline.core.errors import ConfigError
from pipeline.core.home import alignlab_home

FILE_NAME = "prices.yaml"


class Prices(BaseModel):
    """Price per hour of one worker of each GPU class, in one currency."""

    model_config = ConfigDict(extra="forbid")

    currency: str = Field("USD", min_length=1, max_length=10, description="Currency of every price here.")
    per_hour: dict[str, float] = Field(default_factory=dict, description="Queue (GPU class) -> price per hour.")

    @field_validator("per_hour")
    @classmethod
    def _known_queues(cls, value: dict[str, float]) -> dict[str, float]:
        for queue, price in value.items():
            if queue not in QUEUE_NAMES:
                raise ValueError(f"{queue!r} is not a queue; the queues are {', '.join(QUEUE_NAMES)}")
            if not price >= 0:  # also refuses NaN
                raise ValueError(f"{queue}: a price per hour is a number ≥ 0, got {price}")
        return value

    def price(self, queue: str) -> float | None:
        return self.per_hour.get(queue)

    def cost(self, seconds: float, queue: str) -> float | None:
        """What `seconds` on a worker of `queue` cost; None where that queue has no price."""
        price = self.price(queue)
        return None if price is None else seconds / 3600 * price

    def money(self, amount: float) -> str:
        return f"{amount:,.2f} {self.currency}" if amount >= 0.01 or amount == 0 else f"{amount:.4f} {self.currency}"


def prices_path(home: Path | None = None) -> Path:
    return (home or alignlab_home()) / FILE_NAME


def load_prices(home: Path | None = None) -> Prices:
    """The price table, empty when there is no file; a clear error naming the file and field when it is wrong."""
    path = prices_path(home)
    if not path.exists():
        return Prices()
    try:
        data = yaml.safe_load(path.read_text()) or {}
        return Prices.model_validate(data)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from exc
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"{path}: field {field}: {first['msg']}") from exc


def save_prices(prices: Prices, home: Path | None = None) -> Path:
    path = prices_path(home)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(prices.model_dump(), sort_keys=False))
    return path


def set_price(queue: str, price: float, home: Path | None = None) -> Prices:
    """Set one queue's price per hour and save the table; an unknown queue or a negative price is refused."""
    current = load_prices(home)
    try:
        updated = Prices.model_validate({**current.model_dump(), "per_hour": {**current.per_hour, queue: price}})
    except ValidationError as exc:
        raise ConfigError(f"price for {queue}: {exc.errors()[0]['msg']}") from exc
    save_prices(updated, home)
    return updated


def ledger_text(stages: list[dict], prices: Prices) -> str:
    """A run's cost so far from its stage runs' ledger (`charged_seconds`, `cost`, `queue`), in words."""
    charged = [s for s in stages if s.get("charged_seconds") is not None]
    if not charged:
        return "nothing charged yet: a stage is charged when it ends"
    unpriced = sorted({s["queue"] for s in charged if s.get("cost") is None})
    known = sum(s["cost"] for s in charged if s.get("cost") is not None)
    if unpriced:
        return (
            f"at least {prices.money(known)}; unknown for queue {', '.join(unpriced)} (no price when those stages "
            f"ended: alignlab prices set {unpriced[0]} PRICE_PER_HOUR)"
        )
    hours = sum(s["charged_seconds"] for s in charged) / 3600
    return f"{prices.money(known)} for {hours:.2f} worker hours over {len(charged)} stage runs"
