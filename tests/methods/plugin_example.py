"""A rankbench method plugin: low-rank projection every `period` steps, factorized at the end."""
import torch
from torch import nn

from rankbench.methods import Context, Method, MethodReport, check_param, lowrank, register


@register("example-lowrank")
class ExampleLowRank(Method):
    def __init__(self, period: int = 100, rule: str = "energy:0.9") -> None:
        check_param("period", period, isinstance(period, int) and period >= 1, "an int >= 1")
        self.period, self.rule, self.layers = period, lowrank.parse_rule(rule), []

    def attach(self, model: nn.Module, ctx: Context) -> None:
        self.names = lowrank.select_layers(model)  # convs > 1x1 but the first

    def before_step(self, model: nn.Module, step: int) -> None:
        if step > 0 and step % self.period == 0 and not self.rule.is_global:
            weights = [model.get_submodule(n).weight for n in self.names]
            with torch.no_grad():  # one batched SVD per weight shape, no host sync
                for w, p in zip(weights, lowrank.project(weights, "channel", self.rule, False)[0]):
                    w.copy_(p)

    def compress(self, model: nn.Module) -> nn.Module:
        small, self.layers = lowrank.decompose_model(model, "channel", self.rule,
                                                     example_input=self.example_input(model))
        return small

    def report(self) -> MethodReport:
        return MethodReport(self.layers, scheme="channel", rule=str(self.rule))
