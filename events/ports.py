"""The port plan: every listener of the stack and its port, defined once.

The settings' defaults, `vdetect up`'s options, the local stack's environment, the tests and the
README's table derive from it; compose runs each service on the same port in a container of its own.
On one machine the inference workers need a port each: worker 0 takes `inference`, every further
worker the next port up that no other listener of the plan takes, so no number of workers makes two
listeners share one. A plan that still does (two services set to one port) is refused before
anything starts.
"""

from collections import Counter
from dataclasses import dataclass, fields, replace
from typing import Self

HIGHEST = 65_535


@dataclass(frozen=True)
class PortPlan:
    mongo: int = 27017  # SecantusDB in the local stack (MongoDB's port)
    kafka: int = 9092  # Tansu in the local stack (Kafka's port)
    api: int = 8080
    runner: int = 8002
    inference: int = 8003
    outbox_relay: int = 8004
    s3_relay: int = 8005
    webhook_relay: int = 8006
    render: int = 8001  # the render worker (annotated videos)

    @classmethod
    def names(cls) -> list[str]:
        """The listeners' names as the command line and logs spell them (`outbox-relay`)."""
        return [field.name.replace("_", "-") for field in fields(cls)]

    @classmethod
    def of(cls, ports: dict[str, int]) -> Self:
        """A plan from {name: port}, names as `names` spells them; the others keep their default."""
        return replace(cls(), **{name.replace("-", "_"): port for name, port in ports.items()})

    def ports(self) -> dict[str, int]:
        """{name: port} of the plan's own entries (inference: worker 0)."""
        return {field.name.replace("_", "-"): getattr(self, field.name) for field in fields(self)}

    def inference_ports(self, workers: int) -> list[int]:
        """The port of each of `workers` inference workers on one machine: `inference`, then upwards,
        skipping the ports of the plan's other listeners."""
        others = {port for name, port in self.ports().items() if name != "inference"}
        found = [self.inference]
        candidate = self.inference
        while len(found) < workers:
            candidate += 1
            if candidate > HIGHEST:
                raise ValueError(f"{workers} inference workers do not fit above port {self.inference}")
            if candidate not in others:
                found.append(candidate)
        return found

    def listeners(self, inference_workers: int = 1) -> dict[str, int]:
        """Every listener of a local stack with this many inference workers: worker i > 0 is `inference-i`."""
        ports = self.ports()
        for i, port in enumerate(self.inference_ports(inference_workers)):
            ports[f"inference-{i}" if i else "inference"] = port
        return ports

    def clashes(self) -> list[str]:
        """What is wrong with the plan, one sentence each: ports out of range, two listeners on one port."""
        problems = [f"{name} port {port} is not between 1 and {HIGHEST}"
                    for name, port in self.ports().items() if not 1 <= port <= HIGHEST]  # fmt: skip
        taken = Counter(self.ports().values())
        for port, count in sorted(taken.items()):
            if count > 1:
                sharing = [name for name, value in self.ports().items() if value == port]
                problems.append(f"{', '.join(sharing[:-1])} and {sharing[-1]} share port {port}")
        return problems


DEFAULT = PortPlan()
