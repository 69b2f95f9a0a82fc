"""Term 7: voxel-to-prototype contrastive loss on the unreliable voxels."""
import torch
import torch.nn.functional as F

from .precision import widen


def prototype_contrastive_loss(features, student_prob, pseudo_label, reliable,
                               tau=0.1, max_samples=2048, generator=None):
    """InfoNCE pulling each unreliable voxel's feature to its class prototype.

    f_v = features at voxel v, L2-normalised over the channel dim.
    P_c = normalise(mean of f_v over {v in R, yhat_v = c}), detached (R = reliable, yhat = pseudo_label);
          a class with no such voxel has no prototype and drops out of the softmax.
    Candidates: voxels not in R, of class a_v = argmax_c student_prob; per class with a prototype at most
          max_samples drawn uniformly without replacement (torch.randperm with `generator` over the class's
          candidates in flattened (b, x, y, z) order; max_samples=None keeps all); candidates of classes
          without prototype are skipped.
    L_con = mean over candidates of CE(cos(f_v, P) / tau, a_v);
          0 (on the graph) with fewer than two prototypes or no candidate.

    features: (B, F, X, Y, Z) of any float dtype (the gradient flows here only, to the candidates);
    student_prob: (B, C, X, Y, Z); pseudo_label: (B, X, Y, Z) int64; reliable: (B, X, Y, Z) bool;
    generator: torch.Generator or None (random indices are drawn on its device).
    Returns an at least float32 scalar: f, P and the CE are computed in float32 for half-precision features.
    Host syncs: one to learn which classes have a prototype and how many candidates each has, and one
    nonzero per class with a prototype (the candidates to draw from are a data-dependent set).
    """
    n_classes = student_prob.shape[1]
    flat = features.flatten(2)  # (B, F, V), a view; voxel n = b * V + v of the batch
    n_voxels = flat.shape[2]
    classes_col = torch.arange(n_classes, device=features.device)[:, None, None]  # (C, 1, 1)
    # autocast off: under float16 the prototype sum over a million unit features of one class passes 65504
    with torch.autocast(features.device.type, enabled=False):
        with torch.no_grad():
            f = F.normalize(widen(flat), dim=1)  # (B, F, V)
            reliable = reliable.flatten(1)  # (B, V)
            member = (pseudo_label.flatten(1) == classes_col) & reliable  # (C, B, V): v in R with yhat_v = c
            # the sum has the mean's direction; an empty class gives 0 and is left out below
            totals = (f @ member.permute(1, 2, 0).to(f.dtype)).sum(dim=0)  # (B, F, C) summed over b: (F, C)
            prototypes = F.normalize(totals.T, dim=1)  # (C, F)
            assigned = student_prob.max(dim=1).indices.flatten(1)  # (B, V) argmax; max() is the faster one on CPU
            candidate = (assigned == classes_col) & ~reliable  # (C, B, V)
            n_members, n_candidates = torch.stack([member.sum(dim=(1, 2)), candidate.sum(dim=(1, 2))]).tolist()
            del f, member  # the batch of unit features is not needed past the prototypes
        classes = [c for c in range(n_classes) if n_members[c] > 0]
        if len(classes) < 2 or sum(n_candidates[c] for c in classes) == 0:
            return widen(flat[0, 0, 0]) * 0  # on the graph

        picked, targets = [], []
        for target, c in enumerate(classes):
            index = candidate[c].flatten().nonzero().flatten()  # (n_candidates[c],) as b * V + v
            if max_samples is not None and index.numel() > max_samples:
                device = generator.device if generator is not None else index.device
                order = torch.randperm(index.numel(), generator=generator, device=device)
                index = index[order[:max_samples].to(index.device)]
            picked.append(index)
            targets.append(torch.full_like(index, target))
        index = torch.cat(picked)
        # f of the drawn voxels only, on the graph: the same unit features as above, not a second batch of them
        sample = F.normalize(widen(flat[index // n_voxels, :, index % n_voxels]), dim=1)  # (K, F)
        logits = sample @ prototypes[classes].T / tau  # (K, P): cosines, both sides of unit length
        return F.cross_entropy(logits, torch.cat(targets))
