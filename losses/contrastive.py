"""Term 7: voxel-to-prototype contrastive loss on the unreliable voxels."""
import torch
import torch.nn.functional as F

from .precision import widen


def prototype_contrastive_loss(features, student_prob, pseudo_label, reliable,
                               tau=0.1, max_samples=2048, generator=None):
    """InfoNCE pulling each unreliable voxel's feature to its class prototype.

    f = features L2-normalised per voxel over the channel dim.
    P_c = normalise(mean of f over {v in R, yhat_v = c}), detached; classes with
    no such voxel have no prototype and drop out of the softmax.
    Candidates: voxels not in R, class a_v = argmax_c student_prob; per class
    with a prototype at most max_samples drawn uniformly without replacement
    (torch.randperm with `generator`; max_samples=None keeps all); candidates
    of classes without prototype are skipped.
    L_con = mean over candidates of CE(cos(f_v, P) / tau, a_v);
    0 (on the graph) with fewer than two prototypes or no candidate.

    features: (B, F, X, Y, Z) of any float dtype (gradient flows here only);
    student_prob: (B, C, X, Y, Z); pseudo_label: (B, X, Y, Z) int64; reliable:
    (B, X, Y, Z) bool; generator: torch.Generator or None (random indices are
    drawn on its device). Returns an at least float32 scalar: prototypes, similarities and
    the CE are float32 whatever the autocast dtype, without a float32 copy of the
    whole batch of features.
    """
    n_classes = student_prob.shape[1]
    flat = features.flatten(2)  # (B, F, V), a view (also of channels_last_3d features)
    n_voxels = flat.shape[2]
    # autocast off: it would run the matrix products below in float16, whose sum over a million unit
    # features of one class passes 65504 (and whose 1/norm of a zero feature is inf, times 0 NaN)
    with torch.no_grad(), torch.autocast(features.device.type, enabled=False):
        reliable = reliable.detach().flatten(1)
        pseudo_label = pseudo_label.detach().flatten(1)
        classes = (torch.bincount(pseudo_label[reliable], minlength=n_classes) > 0).nonzero().flatten().tolist()
        totals = 0
        for b in range(flat.shape[0]):
            volume = widen(flat[b])  # (F, V): one volume at a time is in float32, never the batch
            # sum of unit features = features weighted by 1/norm: no normalised copy of the volume
            weight = reliable[b] / (volume * volume).sum(dim=0).sqrt().clamp_min(1e-12)  # (V,)
            onehot = F.one_hot(pseudo_label[b], n_classes).to(weight.dtype)  # (V, C)
            totals = totals + volume @ (onehot * weight[:, None])  # (F, C)
        # normalising the sum gives the same direction as normalising the mean
        prototypes = F.normalize(totals.T[classes], dim=1) if classes else None  # (P, F)
        # max().indices is argmax, much faster than argmax over dim 1 on CPU
        candidate_class = student_prob.detach().max(dim=1).indices.flatten(1)
        candidate_class[reliable] = -1
    zero = widen(flat[0, 0, 0]) * 0  # on the graph, without a reduction over the whole volume
    if len(classes) < 2:
        return zero

    picked, targets = [], []
    for target, c in enumerate(classes):
        index = (candidate_class == c).flatten().nonzero().flatten()  # b * V + v
        if max_samples is not None and index.numel() > max_samples:
            device = generator.device if generator is not None else index.device
            order = torch.randperm(index.numel(), generator=generator, device=device)
            index = index[order[:max_samples].to(index.device)]
        picked.append(index)
        targets.append(torch.full_like(index, target))
    index = torch.cat(picked)
    if index.numel() == 0:
        return zero
    with torch.autocast(features.device.type, enabled=False):
        # only the drawn voxels enter the graph: normalise them here, not the whole volume
        sample = F.normalize(widen(flat[index // n_voxels, :, index % n_voxels]), dim=1)  # (K, F)
        logits = sample @ prototypes.T / tau
        return F.cross_entropy(logits, torch.cat(targets))
