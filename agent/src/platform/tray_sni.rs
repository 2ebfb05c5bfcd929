//! The tray on Linux/BSD: a StatusNotifierItem (with its DBusMenu) served by ksni on the
//! agent's tokio runtime. Nothing here polls: the service sleeps until the bus calls it.

use std::sync::Arc;

use ksni::TrayMethods as _;

use crate::tray::{icon_rgba, menu, TrayEvent, TrayView, ICON_SIZE};

struct Sni {
    view: TrayView,
    on_event: Arc<dyn Fn(TrayEvent) + Send + Sync>,
}

impl ksni::Tray for Sni {
    fn id(&self) -> String {
        "sos-agent".into()
    }

    fn title(&self) -> String {
        self.view.title.into()
    }

    fn category(&self) -> ksni::Category {
        ksni::Category::Communications
    }

    fn icon_pixmap(&self) -> Vec<ksni::Icon> {
        // ksni wants ARGB32 in network byte order.
        let rgba = icon_rgba(self.view.state);
        let data = rgba.chunks_exact(4).flat_map(|p| [p[3], p[0], p[1], p[2]]).collect();
        vec![ksni::Icon { width: ICON_SIZE as i32, height: ICON_SIZE as i32, data }]
    }

    fn tool_tip(&self) -> ksni::ToolTip {
        ksni::ToolTip {
            title: self.view.title.into(),
            description: format!("{}: {}", self.view.title, self.view.detail),
            ..Default::default()
        }
    }

    fn activate(&mut self, _x: i32, _y: i32) {
        (self.on_event)(TrayEvent::Click);
    }

    fn menu(&self) -> Vec<ksni::MenuItem<Self>> {
        // A responder desktop's open alerts first: choosing one shows its popup again.
        let mut items: Vec<ksni::MenuItem<Self>> = self
            .view
            .alerts
            .iter()
            .map(|(id, label)| {
                let id = *id;
                ksni::menu::StandardItem {
                    label: label.clone(),
                    activate: Box::new(move |t: &mut Self| (t.on_event)(TrayEvent::Alert(id))),
                    ..Default::default()
                }
                .into()
            })
            .collect();
        if !items.is_empty() {
            items.push(ksni::MenuItem::Separator);
        }
        items.extend(menu(&self.view).into_iter().map(|entry| {
            match entry {
                None => ksni::MenuItem::Separator,
                Some((id, label, enabled)) => ksni::menu::StandardItem {
                    label,
                    enabled,
                    activate: Box::new(move |t: &mut Self| (t.on_event)(TrayEvent::Menu(id))),
                    ..Default::default()
                }
                .into(),
            }
        }));
        items
    }
}

/// The tray icon.
pub struct Tray {
    handle: ksni::Handle<Sni>,
    runtime: tokio::runtime::Handle,
    /// The newest view not yet applied: updates run as tasks that may finish in any order,
    /// so each applies the newest, never its own (a burst of changes must end on the last).
    latest: Arc<std::sync::Mutex<Option<TrayView>>>,
}

impl std::fmt::Debug for Tray {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tray").finish_non_exhaustive()
    }
}

impl Tray {
    /// Register the item on the session bus. It appears in any panel that hosts
    /// StatusNotifierItems, including one started later.
    ///
    /// # Errors
    /// If there is no session bus.
    pub fn new(
        view: TrayView,
        runtime: &tokio::runtime::Handle,
        on_event: impl Fn(TrayEvent) + Send + Sync + 'static,
    ) -> Result<Self, String> {
        let sni = Sni { view, on_event: Arc::new(on_event) };
        let handle = runtime
            .block_on(sni.assume_sni_available(true).spawn())
            .map_err(|e| format!("cannot register the tray item on the session bus: {e}"))?;
        Ok(Tray { handle, runtime: runtime.clone(), latest: Arc::default() })
    }

    /// Show `view` (without waiting for the bus).
    pub fn show(&mut self, view: TrayView) {
        if let Ok(mut l) = self.latest.lock() {
            *l = Some(view);
        }
        let (handle, latest) = (self.handle.clone(), self.latest.clone());
        self.runtime.spawn(async move {
            handle
                .update(move |t| {
                    if let Some(v) = latest.lock().ok().and_then(|mut l| l.take()) {
                        t.view = v;
                    }
                })
                .await;
        });
    }
}
