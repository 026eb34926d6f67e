//! Metrics over logits. Classification: accuracy, per-class recall, balanced accuracy and the
//! one-vs-rest ROC AUC of a positive class (scored by its softmax probability). Segmentation:
//! Dice, IoU and pixel accuracy of thresholded per-pixel logits against masks.

use serde::Serialize;

/// Metrics of one evaluation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Metrics {
    /// Number of images.
    pub images: usize,
    /// Fraction predicted correctly.
    pub accuracy: f64,
    /// Recall of each class (0 for a class with no images).
    pub per_class_recall: Vec<f64>,
    /// Mean of the per-class recalls.
    pub balanced_accuracy: f64,
    /// ROC AUC of the positive class against the rest, when one is given and both occur.
    pub positive_auc: Option<f64>,
}

/// Index of the largest logit (the first on ties; 0 for an empty slice).
pub fn argmax(logits: &[f64]) -> usize {
    logits.iter().enumerate().fold((0, f64::NEG_INFINITY), |best, (i, v)| if *v > best.1 { (i, *v) } else { best }).0
}

/// Softmax probabilities.
pub fn softmax(logits: &[f64]) -> Vec<f64> {
    let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = logits.iter().map(|v| (v - max).exp()).collect();
    let sum: f64 = e.iter().sum();
    e.iter().map(|v| v / sum).collect()
}

/// ROC AUC (Mann–Whitney U, ties counted half); `None` unless both classes occur.
pub fn auc(scores: &[f64], positive: &[bool]) -> Option<f64> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|a, b| scores[*a].total_cmp(&scores[*b]));
    let mut ranks = vec![0.0; scores.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && scores[order[j + 1]] == scores[order[i]] {
            j += 1;
        }
        for k in i..=j {
            ranks[order[k]] = (i + j) as f64 / 2.0 + 1.0;
        }
        i = j + 1;
    }
    let p = positive.iter().filter(|v| **v).count() as f64;
    let n = positive.len() as f64 - p;
    if p == 0.0 || n == 0.0 {
        return None;
    }
    let rank_sum: f64 = ranks.iter().zip(positive).filter(|(_, pos)| **pos).map(|(r, _)| r).sum();
    Some((rank_sum - p * (p + 1.0) / 2.0) / (p * n))
}

/// The largest score threshold that flags at least `sensitivity` of the positives (a score at
/// or above it is flagged); `None` without positives or for a sensitivity outside (0, 1].
///
/// Taking the largest such threshold keeps the specificity as high as the target allows.
pub fn threshold_for_sensitivity(scores: &[f64], positive: &[bool], sensitivity: f64) -> Option<f64> {
    if !(sensitivity > 0.0 && sensitivity <= 1.0) {
        return None;
    }
    let mut flagged: Vec<f64> = scores.iter().zip(positive).filter(|(_, p)| **p).map(|(s, _)| *s).collect();
    if flagged.is_empty() {
        return None;
    }
    flagged.sort_by(|a, b| b.total_cmp(a));
    // The k-th highest positive score, k = ceil(sensitivity · positives); the epsilon keeps
    // 0.9 · 10 from rounding up to 10.
    let k = ((sensitivity * flagged.len() as f64) - 1e-9).ceil().max(1.0) as usize;
    Some(flagged[k.min(flagged.len()) - 1])
}

/// Sensitivity and specificity of flagging scores at or above `threshold`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Screening {
    /// Flagged positives over positives (0 without positives).
    pub sensitivity: f64,
    /// Unflagged negatives over negatives (0 without negatives).
    pub specificity: f64,
}

/// [`Screening`] of `scores` against `positive` at `threshold`.
pub fn screening(scores: &[f64], positive: &[bool], threshold: f64) -> Screening {
    let (mut tp, mut p, mut tn, mut n) = (0usize, 0usize, 0usize, 0usize);
    for (score, pos) in scores.iter().zip(positive) {
        let flagged = *score >= threshold;
        if *pos {
            p += 1;
            tp += usize::from(flagged);
        } else {
            n += 1;
            tn += usize::from(!flagged);
        }
    }
    let ratio = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    Screening { sensitivity: ratio(tp, p), specificity: ratio(tn, n) }
}

/// Metrics of `logits` (one row per image) against `labels` over `classes` classes.
pub fn evaluate(logits: &[Vec<f64>], labels: &[u8], classes: usize, positive: Option<usize>) -> Metrics {
    let predictions: Vec<usize> = logits.iter().map(|l| argmax(l)).collect();
    let correct = predictions.iter().zip(labels).filter(|(p, l)| **p == usize::from(**l)).count();
    let per_class_recall: Vec<f64> = (0..classes)
        .map(|c| {
            let of_class: Vec<usize> = (0..labels.len()).filter(|i| usize::from(labels[*i]) == c).collect();
            if of_class.is_empty() {
                0.0
            } else {
                of_class.iter().filter(|i| predictions[**i] == c).count() as f64 / of_class.len() as f64
            }
        })
        .collect();
    let positive_auc = positive.and_then(|pc| {
        let scores: Vec<f64> = logits.iter().map(|l| softmax(l).get(pc).copied().unwrap_or(0.0)).collect();
        let is_pos: Vec<bool> = labels.iter().map(|l| usize::from(*l) == pc).collect();
        auc(&scores, &is_pos)
    });
    Metrics {
        images: labels.len(),
        accuracy: if labels.is_empty() { 0.0 } else { correct as f64 / labels.len() as f64 },
        balanced_accuracy: per_class_recall.iter().sum::<f64>() / classes.max(1) as f64,
        per_class_recall,
        positive_auc,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_operating_threshold_flags_the_asked_share_of_positives() {
        let scores = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05];
        let positive = [true, false, true, true, false, true, true, false, true, true];
        // 7 positives: 90 % needs ceil(6.3) = 7 of them, so the lowest positive score.
        assert_eq!(threshold_for_sensitivity(&scores, &positive, 0.9), Some(0.05));
        // 70 % needs 4.9 → 5: the fifth highest positive score.
        let t = threshold_for_sensitivity(&scores, &positive, 0.7).unwrap();
        assert_eq!(t, 0.3);
        let s = screening(&scores, &positive, t);
        assert!((s.sensitivity - 5.0 / 7.0).abs() < 1e-12 && (s.specificity - 1.0 / 3.0).abs() < 1e-12, "{s:?}");
        assert_eq!(threshold_for_sensitivity(&scores, &[false; 10], 0.9), None);
        assert_eq!(threshold_for_sensitivity(&scores, &positive, 0.0), None);
    }

    #[test]
    fn auc_counts_ties_half() {
        assert_eq!(auc(&[0.1, 0.4, 0.35, 0.8], &[false, false, true, true]), Some(0.75));
        assert_eq!(auc(&[0.5, 0.5], &[false, true]), Some(0.5));
        assert_eq!(auc(&[0.5, 0.6], &[true, true]), None);
    }

    #[test]
    fn argmax_takes_the_first_of_equal_logits() {
        assert_eq!(argmax(&[0.5, 2.0, 2.0, -1.0]), 1);
        assert_eq!(argmax(&[]), 0);
    }

    #[test]
    fn softmax_sums_to_one_and_keeps_the_order() {
        let p = softmax(&[1000.0, 999.0, -5.0]);
        assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        assert!(p[0] > p[1] && p[1] > p[2]);
    }

    #[test]
    fn recall_and_balanced_accuracy() {
        let logits = vec![vec![1.0, 0.0], vec![1.0, 0.0], vec![0.0, 1.0], vec![1.0, 0.0]];
        let m = evaluate(&logits, &[0, 0, 1, 1], 2, Some(1));
        assert_eq!(m.accuracy, 0.75);
        assert_eq!(m.per_class_recall, vec![1.0, 0.5]);
        assert_eq!(m.balanced_accuracy, 0.75);
        assert_eq!(m.positive_auc, Some(0.75));
    }
}

/// Segmentation quality of thresholded masks against the truth.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SegmentationScores {
    /// Number of images.
    pub images: usize,
    /// Dice over all pixels of all images: 2·|P ∩ T| / (|P| + |T|).
    pub dice: f64,
    /// IoU over all pixels: |P ∩ T| / |P ∪ T|.
    pub iou: f64,
    /// Mean of the per-image Dice (1 where both masks are empty).
    pub mean_dice: f64,
    /// Mean of the per-image IoU.
    pub mean_iou: f64,
    /// Fraction of pixels whose prediction equals the truth.
    pub pixel_accuracy: f64,
}

/// The logit above which a pixel is lesion, for a probability `threshold` (the sigmoid's inverse).
pub fn logit_threshold(threshold: f64) -> f64 {
    (threshold / (1.0 - threshold)).ln()
}

/// Per-image Dice of a predicted mask against the truth (1 when both are empty).
pub fn dice(predicted: &[bool], truth: &[u8]) -> f64 {
    let (inter, sum) = predicted.iter().zip(truth).fold((0usize, 0usize), |(i, s), (p, t)| {
        (i + usize::from(*p && *t > 0), s + usize::from(*p) + usize::from(*t > 0))
    });
    if sum == 0 { 1.0 } else { 2.0 * inter as f64 / sum as f64 }
}

/// Scores of per-pixel `logits` (one row of H·W per image; lesion where the logit is at least
/// the threshold's, `threshold` being a probability) against `masks` (H·W per image, image after image, 1 = lesion).
pub fn segmentation(logits: &[Vec<f64>], masks: &[u8], threshold: f64) -> SegmentationScores {
    let cut = logit_threshold(threshold);
    let (mut inter, mut sums, mut union, mut equal, mut pixels) = (0usize, 0usize, 0usize, 0usize, 0usize);
    let (mut dice_sum, mut iou_sum) = (0.0, 0.0);
    let mut offset = 0;
    for row in logits {
        let truth = &masks[offset.min(masks.len())..(offset + row.len()).min(masks.len())];
        offset += row.len();
        let (mut i, mut s, mut u) = (0usize, 0usize, 0usize);
        for (logit, t) in row.iter().zip(truth) {
            let (p, t) = (*logit >= cut, *t > 0);
            i += usize::from(p && t);
            s += usize::from(p) + usize::from(t);
            u += usize::from(p || t);
            equal += usize::from(p == t);
        }
        pixels += truth.len();
        dice_sum += if s == 0 { 1.0 } else { 2.0 * i as f64 / s as f64 };
        iou_sum += if u == 0 { 1.0 } else { i as f64 / u as f64 };
        (inter, sums, union) = (inter + i, sums + s, union + u);
    }
    let images = logits.len();
    let ratio = |a: usize, b: usize| if b == 0 { 1.0 } else { a as f64 / b as f64 };
    SegmentationScores {
        images,
        dice: ratio(2 * inter, sums),
        iou: ratio(inter, union),
        mean_dice: if images == 0 { 0.0 } else { dice_sum / images as f64 },
        mean_iou: if images == 0 { 0.0 } else { iou_sum / images as f64 },
        pixel_accuracy: ratio(equal, pixels),
    }
}

#[cfg(test)]
mod segmentation_tests {
    use super::*;

    #[test]
    fn dice_iou_and_accuracy_of_known_masks() {
        // Image 1: predicted {0, 1}, truth {1, 2}: intersection 1. Image 2: both empty.
        let logits = vec![vec![1.0, 2.0, -1.0, -3.0], vec![-1.0; 4]];
        let masks = [0, 1, 1, 0, 0, 0, 0, 0];
        let scores = segmentation(&logits, &masks, 0.5);
        assert_eq!(scores.images, 2);
        assert!((scores.dice - 0.5).abs() < 1e-12, "{scores:?}");
        assert!((scores.iou - 1.0 / 3.0).abs() < 1e-12);
        assert!((scores.mean_dice - 0.75).abs() < 1e-12);
        assert!((scores.pixel_accuracy - 6.0 / 8.0).abs() < 1e-12);
        assert!((logit_threshold(0.5)).abs() < 1e-12);
        assert!((dice(&[true, true, false, false], &[0, 1, 1, 0]) - 0.5).abs() < 1e-12);
    }
}
