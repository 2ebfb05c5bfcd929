//! The tray on Windows and macOS: tray-icon's native item. Its events arrive through
//! tray-icon's and muda's global handlers, which forward them to `on_event`.
//! (Not built on this project's CI machine, which is Linux.)

use tray_icon::menu::{Menu, MenuId, MenuItem, PredefinedMenuItem};
use tray_icon::{Icon, TrayIcon, TrayIconBuilder};

use crate::tray::{icon_rgba, ids, menu, TrayEvent, TrayView, ICON_SIZE};

/// The tray icon.
pub struct Tray {
    icon: TrayIcon,
    items: Vec<(&'static str, MenuItem)>,
    view: TrayView,
}

impl std::fmt::Debug for Tray {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tray").field("view", &self.view).finish_non_exhaustive()
    }
}

fn icon(view: &TrayView) -> Option<Icon> {
    Icon::from_rgba(icon_rgba(view.state), ICON_SIZE, ICON_SIZE).ok()
}

impl Tray {
    /// Create the icon and its menu. Call on the main thread once the event loop runs.
    ///
    /// # Errors
    /// If the platform refuses the icon.
    pub fn new(
        view: TrayView,
        _runtime: &tokio::runtime::Handle,
        on_event: impl Fn(TrayEvent) + Send + Sync + 'static,
    ) -> Result<Self, String> {
        let m = Menu::new();
        let mut items = Vec::new();
        for entry in menu(&view) {
            let added = match entry {
                None => m.append(&PredefinedMenuItem::separator()),
                Some((id, label, enabled)) => {
                    let item = MenuItem::with_id(MenuId::new(id), label, enabled, None);
                    let r = m.append(&item);
                    items.push((id, item));
                    r
                }
            };
            added.map_err(|e| e.to_string())?;
        }
        let tray = TrayIconBuilder::new()
            .with_id("sos-agent")
            .with_title(view.title)
            .with_tooltip(format!("{}: {}", view.title, view.detail))
            .with_menu(Box::new(m))
            .with_menu_on_left_click(false);
        let tray = match icon(&view) {
            Some(i) => tray.with_icon(i),
            None => tray,
        };
        let icon = tray.build().map_err(|e| e.to_string())?;
        let on_event = std::sync::Arc::new(on_event);
        let clicks = on_event.clone();
        tray_icon::TrayIconEvent::set_event_handler(Some(move |e: tray_icon::TrayIconEvent| {
            if let tray_icon::TrayIconEvent::Click {
                button: tray_icon::MouseButton::Left,
                button_state: tray_icon::MouseButtonState::Up,
                ..
            } = e
            {
                clicks(TrayEvent::Click);
            }
        }));
        tray_icon::menu::MenuEvent::set_event_handler(Some(move |e: tray_icon::menu::MenuEvent| {
            for id in [ids::SEND, ids::TEST, ids::CANCEL, ids::QUIT] {
                if e.id.0 == id {
                    on_event(TrayEvent::Menu(id));
                }
            }
        }));
        Ok(Tray { icon, items, view })
    }

    /// Show `view`.
    pub fn show(&mut self, view: TrayView) {
        if view.state != self.view.state {
            let _ = self.icon.set_icon(icon(&view));
        }
        let _ = self.icon.set_tooltip(Some(format!("{}: {}", view.title, view.detail)));
        for (id, item) in &self.items {
            match *id {
                ids::STATUS => item.set_text(&view.detail),
                ids::CANCEL => item.set_enabled(view.can_cancel),
                _ => {}
            }
        }
        self.view = view;
    }
}
