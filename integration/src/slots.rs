//! The address slots of a testbed's instances: which slot (and so which
//! address on the bridge) each running instance holds. Kept apart from
//! [`crate::Testbed`] so that an [`crate::Instance`] can hold its slot
//! without importing the testbed that handed it out.

use crate::network::MAXIMUM_INSTANCES;
use anyhow::{Result, bail};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// Slot number to instance name, for one testbed.
#[derive(Debug, Default)]
pub(crate) struct SlotTable {
    slots: Mutex<BTreeMap<u8, String>>,
}

impl SlotTable {
    /// Reserves the lowest free slot for instance `name`. `keep_alive` is
    /// held as long as the reservation: the testbed's bridge, which the
    /// instance in this slot is attached to.
    pub fn reserve(
        self: &Arc<Self>,
        name: &str,
        keep_alive: Arc<dyn std::any::Any + Send + Sync>,
    ) -> Result<SlotReservation> {
        let mut slots = lock(&self.slots);
        if slots.values().any(|existing| existing == name) {
            bail!("Failed to boot instance {name}: an instance of that name is running");
        }
        let Some(slot) = (0..MAXIMUM_INSTANCES).find(|slot| !slots.contains_key(slot)) else {
            bail!("Failed to boot instance {name}: all {MAXIMUM_INSTANCES} addresses are in use");
        };
        slots.insert(slot, name.to_string());
        Ok(SlotReservation {
            table: Arc::clone(self),
            slot,
            _keep_alive: keep_alive,
        })
    }

    /// The names of the instances holding a slot.
    pub fn instance_names(&self) -> Vec<String> {
        lock(&self.slots).values().cloned().collect()
    }
}

/// An instance's address slot, returned to its table when dropped.
pub(crate) struct SlotReservation {
    table: Arc<SlotTable>,
    slot: u8,
    _keep_alive: Arc<dyn std::any::Any + Send + Sync>,
}

impl std::fmt::Debug for SlotReservation {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("SlotReservation")
            .field("slot", &self.slot)
            .finish_non_exhaustive()
    }
}

impl SlotReservation {
    pub fn slot(&self) -> u8 {
        self.slot
    }
}

impl Drop for SlotReservation {
    fn drop(&mut self) {
        lock(&self.table.slots).remove(&self.slot);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The protected data stays consistent even if a holder panicked.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
