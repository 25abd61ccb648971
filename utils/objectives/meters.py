"""Running sums of an epoch's losses and accuracies, kept on the device (no host sync per
step) and summed across processes exactly (counts, not averages of averages)."""
import torch
import torch.distributed as dist


def topk_correct(output, target, topk):
    """Hits among the top k for each k (k is capped at the number of classes, so top-5 of a
    3-class problem is top-3, as in the authors' `accuracy`)."""
    maxk = min(max(topk), output.size(1))
    pred = output.topk(maxk, 1, True, True).indices
    hits = pred.eq(target.view(-1, 1))
    return [hits[:, :min(k, maxk)].any(1).sum() for k in topk]


def earliest_step_of_all(step):
    """The earliest of every process's step tensor, -1 (none) counting as never."""
    never = torch.iinfo(torch.long).max
    step = step.clone()
    step[step < 0] = never
    dist.all_reduce(step, op=dist.ReduceOp.MIN)
    step[step == never] = -1
    return step


def first_nonfinite(first, loss, step):
    """`first` (a device tensor: the first step with a NaN or infinite loss, -1 while none)
    after `loss` at `step`, without waiting for the device."""
    # new_full launches a fill on the device; torch.tensor(..., device) would sync.
    return torch.where(~torch.isfinite(loss) & (first < 0), first.new_full((), step), first)


def step_or_none(first):
    """A first_nonfinite tensor as a step number, or None (one host sync)."""
    step = int(first.item())
    return None if step < 0 else step


class SingleLabelMeter:
    """The single-label objective's epoch sums: samples, the total loss and each branch's,
    and each branch's top-1/top-5 hits. Values are fetched (one host sync) only when
    `summary()` is called."""
    FIELDS = ('count', 'loss', 'att_loss', 'per_loss', 'att_top1', 'att_top5', 'per_top1',
              'per_top5')

    def __init__(self, device):
        self.device = device
        self.sums = torch.zeros(len(self.FIELDS), dtype=torch.float64, device=device)
        self.nonfinite_step = torch.full((), -1, dtype=torch.long, device=device)

    def update(self, step, output, target, losses):
        """`output`: the model's AbnOutput; `target`: class indices; `losses`: the
        objective's named terms (a plain backbone has no 'att_loss')."""
        n = target.size(0)
        per1, per5 = topk_correct(output.perception_logits.detach(), target, (1, 5))
        per_loss = losses['per_loss'].detach()
        zero = per_loss.new_zeros(())
        if output.attention_logits is not None:
            att1, att5 = topk_correct(output.attention_logits.detach(), target, (1, 5))
            att_loss = losses['att_loss'].detach()
        else:
            att1 = att5 = att_loss = zero
        loss = att_loss + per_loss
        # new_full launches a fill on the device; torch.tensor(..., device) would sync.
        values = torch.stack([
            loss.new_full((), n, dtype=torch.float64), loss.double() * n, att_loss.double() * n,
            per_loss.double() * n, att1.double(), att5.double(), per1.double(), per5.double()])
        self.sums += values
        self.nonfinite_step = first_nonfinite(self.nonfinite_step, loss, step)

    def all_reduce(self):
        if dist.is_available() and dist.is_initialized():
            sums = self.sums.to(torch.float64)
            dist.all_reduce(sums)
            self.sums = sums
            self.nonfinite_step = earliest_step_of_all(self.nonfinite_step)

    def first_nonfinite_step(self):
        return step_or_none(self.nonfinite_step)

    def summary(self):
        """Averages: losses per sample, accuracies in percent."""
        values = self.sums.tolist()
        count = max(values[0], 1.0)
        out = {'count': int(values[0])}
        for name, total in zip(self.FIELDS[1:], values[1:]):
            out[name] = total / count * (100.0 if 'top' in name else 1.0)
        return out

    def state_dict(self):
        return {'sums': self.sums.cpu()}

    def load_state_dict(self, state):
        self.sums = state['sums'].to(device=self.device, dtype=torch.float64)
