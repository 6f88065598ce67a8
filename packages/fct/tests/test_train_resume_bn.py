"""A run resumed past the BatchNorm switch point starts with BatchNorm frozen (callback state is checkpointed)."""

from types import SimpleNamespace

from bramley.fct.train import _FreezeBatchNormAt


class _Task:
    bn_frozen = False
    training = True

    def train(self, mode=True):
        self.training = mode
        return self


def test_freeze_callback_state_round_trip():
    task = _Task()
    callback = _FreezeBatchNormAt(task, 0.5)
    callback(SimpleNamespace(step=1, total_steps=10))
    assert not task.bn_frozen and callback.state_dict() == {"bn_frozen": False}
    callback(SimpleNamespace(step=5, total_steps=10))
    assert task.bn_frozen
    resumed_task = _Task()
    _FreezeBatchNormAt(resumed_task, 0.5).load_state_dict(callback.state_dict())
    assert resumed_task.bn_frozen
