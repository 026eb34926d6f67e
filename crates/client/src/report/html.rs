//! The report page: one HTML document with its style, script and pictures inline.

use blindfold_nn::OperatingPoint;
use maud::{DOCTYPE, Markup, PreEscaped, html};

use super::{Entry, ReportContext, ReportLink, describe_point};
use crate::decrypt::Predictions;

/// Nothing but what the page itself holds: pictures as `data:` URIs, the inline style and
/// script. A browser refuses any other request, so a report opened on a hospital workstation
/// never reaches the network, even if a name in it were crafted to try.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; \
     script-src 'unsafe-inline'; base-uri 'none'; form-action 'none'";

const STYLE: &str = include_str!("page.css");
const SCRIPT: &str = include_str!("page.js");

pub(super) struct Page<'a> {
    pub predictions: &'a Predictions,
    pub context: &'a ReportContext,
    /// In the summary's first order (highest risk first).
    pub entries: &'a [Entry<'a>],
    /// The manifest's operating point and its class.
    pub point: Option<(&'a OperatingPoint, usize)>,
    pub segmentation: bool,
    pub generated: chrono::DateTime<chrono::Utc>,
}

/// Every page's `<head>`: one place for the policy that keeps a report off the network.
fn head(title: &str) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta http-equiv="Content-Security-Policy" content=(CONTENT_SECURITY_POLICY);
            meta name="viewport" content="width=device-width, initial-scale=1";
            meta name="referrer" content="no-referrer";
            title { (title) }
            style { (PreEscaped(STYLE)) }
        }
    }
}

fn percent(p: f64) -> String {
    format!("{:.1} %", p * 100.0)
}

/// The first word of a class name, for column headers ("melanoma", "basal").
fn short(class: &str) -> &str {
    class.split_whitespace().next().unwrap_or(class)
}

pub(super) fn page(page: &Page<'_>) -> String {
    let p = page.predictions;
    let point_class = page.point.map(|(_, class)| p.classes.get(class).map_or("positive", String::as_str));
    let review = page.entries.iter().filter(|e| e.needs_review).count();
    let overflowed = p.images.iter().filter(|i| i.overflow.is_some()).count();
    let dice: Vec<f64> = p.images.iter().filter_map(|i| i.mask.as_ref().and_then(|m| m.dice)).collect();
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            (head(&format!("Blindfold report: {}", p.model)))
            body data-images=(page.entries.len()) {
                header {
                    h1 { "Blindfold report" }
                    p.lead {
                        "Decrypted on this machine. The service computed these results on encrypted images and never saw the images or the results."
                    }
                    dl.facts {
                        dt { "Model" } dd { (p.model) " version " (p.model_version) }
                        dt { "Task" } dd { (p.task) }
                        dt { "Security" } dd { "≥ " (p.security_bits) "-bit (CKKS)" }
                        dt { "Key set" } dd { code { (p.key_set.to_string()) } }
                        dt { "Job" } dd {
                            @if page.context.jobs.is_empty() { "offline (no service job)" }
                            @for (k, job) in page.context.jobs.iter().enumerate() {
                                @if k > 0 { ", " } code { (job.to_string()) }
                            }
                        }
                        dt { "Images" } dd { (page.entries.len()) }
                        dt { "Needs review" } dd #review-count { (review) }
                        @if overflowed > 0 { dt { "Without a result" } dd.warn { (overflowed) } }
                        @if !dice.is_empty() {
                            dt { "Mean Dice" } dd { (format!("{:.3}", dice.iter().sum::<f64>() / dice.len() as f64)) " over " (dice.len()) " ground-truth masks" }
                        }
                        dt { "Written" } dd { (page.generated.format("%Y-%m-%d %H:%M:%S UTC").to_string()) }
                    }
                    @if let (Some((point, _)), Some(class)) = (page.point, point_class) {
                        p.point { "Operating point: " (describe_point(point, class)) "." }
                    }
                    @if !page.context.timings.is_empty() {
                        table.timings {
                            caption { "Timings" }
                            tbody {
                                @for timing in &page.context.timings {
                                    tr { th scope="row" { (timing.stage) } td { (format!("{:.2} s", timing.seconds)) } }
                                }
                            }
                        }
                    }
                }
                main {
                    section #summary {
                        h2 { "Summary" }
                        label.filter {
                            input #review-only type="checkbox";
                            " Needs review only ("
                            (review)
                            ")"
                        }
                        (summary(page, point_class))
                    }
                    section #images {
                        h2 { "Images" }
                        @for entry in page.entries { (card(page, entry, point_class)) }
                    }
                }
                footer {
                    p #render-status { "Rendering…" }
                    p { "Written by blindfold " (env!("CARGO_PKG_VERSION")) ". Patient data: keep this folder on the hospital's machines." }
                }
                script { (PreEscaped(SCRIPT)) }
            }
        }
    };
    markup.into_string()
}

fn summary(page: &Page<'_>, point_class: Option<&str>) -> Markup {
    html! {
        table #summary-table {
            thead {
                tr {
                    th data-type="number" { button type="button" { "#" } }
                    th data-type="text" { button type="button" { "Image" } }
                    th data-type="text" { button type="button" { "Prediction" } }
                    @if page.segmentation {
                        th data-type="number" { button type="button" { "Lesion area" } }
                        th data-type="number" { button type="button" { "Dice" } }
                    } @else {
                        th data-type="number" { button type="button" { "Probability" } }
                    }
                    @if let Some(class) = point_class {
                        th data-type="number" aria-sort="descending" { button type="button" { (short(class)) " probability" } }
                    }
                    th data-type="text" { button type="button" { "Review" } }
                }
            }
            tbody {
                @for entry in page.entries {
                    @let prediction = entry.prediction;
                    tr data-review=(u8::from(entry.needs_review)) {
                        td data-value=(prediction.position) { (prediction.position) }
                        td data-value=(prediction.file) { a href=(format!("#image-{}", prediction.position)) { (prediction.file) } }
                        td data-value=(prediction.class) { (prediction.class) }
                        @if let Some(mask) = &prediction.mask {
                            td data-value=(mask.lesion_fraction) { (mask.lesion_pixels) " px (" (percent(mask.lesion_fraction)) ")" }
                            td data-value=(mask.dice.unwrap_or(-1.0)) { (mask.dice.map_or("–".to_owned(), |d| format!("{d:.3}"))) }
                        } @else if page.segmentation {
                            td data-value="-1" { "–" } td data-value="-1" { "–" }
                        } @else {
                            @let top = prediction.probabilities.get(prediction.class_index).copied();
                            td data-value=(top.unwrap_or(-1.0)) { (top.map_or("–".to_owned(), percent)) }
                        }
                        @if point_class.is_some() {
                            td data-value=(entry.positive.unwrap_or(-1.0)) { (entry.positive.map_or("–".to_owned(), percent)) }
                        }
                        td data-value=(u8::from(entry.needs_review)) { @if entry.needs_review { span.review { "needs review" } } }
                    }
                }
            }
        }
    }
}

fn card(page: &Page<'_>, entry: &Entry<'_>, point_class: Option<&str>) -> Markup {
    let prediction = entry.prediction;
    let classes = &page.predictions.classes;
    html! {
        article.card id=(format!("image-{}", prediction.position)) data-review=(u8::from(entry.needs_review)) {
            div.picture {
                @if let Some(src) = &entry.picture {
                    img src=(src) alt=(format!("image {}: {}", prediction.position, prediction.file))
                        class=(if prediction.mask.is_some() { "overlay" } else { "thumbnail" });
                } @else {
                    div.missing { "No picture: " (entry.no_picture.as_deref().unwrap_or("unknown")) }
                }
            }
            div.details {
                h3 { "#" (prediction.position) " " (prediction.file) }
                @if let Some((width, height)) = entry.original { p.size { "Original " (width) "×" (height) } }
                @if let Some(why) = &entry.far { p.flag { "Far from the model's input: " (why) } }
                @if let Some(why) = &prediction.overflow {
                    p.flag { "No result: " (why) }
                } @else if let Some(mask) = &prediction.mask {
                    p.prediction { strong { (prediction.class) } }
                    p.area {
                        "Lesion area: " (mask.lesion_pixels) " of " (mask.width * mask.height) " pixels ("
                        (percent(mask.lesion_fraction)) " of the image, at the model's " (mask.width) "×" (mask.height) ")"
                    }
                    @if let Some(dice) = mask.dice { p.dice { "Dice against the ground truth: " (format!("{dice:.3}")) } }
                } @else {
                    @let top = prediction.probabilities.get(prediction.class_index).copied().unwrap_or(0.0);
                    p.prediction { "Predicted: " strong { (prediction.class) } " (" (percent(top)) ")" }
                    @if let (Some((point, _)), Some(class), Some(p)) = (page.point, point_class, entry.positive) {
                        div.risk {
                            span.label { (short(class)) " probability " strong { (percent(p)) } }
                            div.bar.risk-bar title=(format!("operating point {:.3}", point.threshold)) {
                                div.fill.risk-fill style=(format!("width: {:.2}%", p * 100.0)) {}
                                div.marker style=(format!("left: {:.2}%", point.threshold * 100.0)) {}
                            }
                            @if p >= point.threshold { span.review { "at or above the operating point: needs review" } }
                        }
                    }
                    div.classes {
                        @for (k, (class, probability)) in classes.iter().zip(&prediction.probabilities).enumerate() {
                            div.class-row.top[k == prediction.class_index] {
                                span.label title=(class) { (class) }
                                div.bar { div.fill style=(format!("width: {:.2}%", probability * 100.0)) {} }
                                span.value { (percent(*probability)) }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// A page linking several reports.
pub(super) fn index(title: &str, links: &[ReportLink], generated: chrono::DateTime<chrono::Utc>) -> String {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body {
                header {
                    h1 { (title) }
                    p.lead { "Written " (generated.format("%Y-%m-%d %H:%M:%S UTC").to_string()) ". Each report was decrypted on this machine." }
                }
                main {
                    ul.reports {
                        @for link in links {
                            li { a href=(link.href) { (link.title) } ": " (link.note) }
                        }
                    }
                }
            }
        }
    }
    .into_string()
}
