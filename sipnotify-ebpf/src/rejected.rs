//! A deliberately invalid program for the loader's tests: both entry points read the packet
//! without a bounds check, which every verifier refuses. Tests load it to prove a verifier
//! rejection is reported as one, with the verifier's own last lines, and never as a missing
//! permission. It carries the globals the loader configures, so it is loaded the real way.
#![no_std]
#![no_main]

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use sipnotify_common::SipConfig;

#[unsafe(no_mangle)]
static SIP_CONFIG: SipConfig = SipConfig::empty();

#[inline(always)]
fn unchecked_read(ctx: &XdpContext) -> u32 {
    // SAFETY: none, on purpose: the verifier refuses this read before it can run.
    let first = unsafe { core::ptr::read_volatile(ctx.data() as *const u8) };
    // SAFETY: a plain read of a static, kept so the global exists in the object.
    let word = unsafe { core::ptr::read_volatile(&raw const SIP_CONFIG.port_bitmap[0]) };
    u32::from(first) + word as u32
}

#[xdp(frags)]
fn sipnotify_xdp(ctx: XdpContext) -> u32 {
    if unchecked_read(&ctx) == 7 {
        return xdp_action::XDP_DROP;
    }
    xdp_action::XDP_PASS
}

#[xdp]
fn sipnotify_lin(ctx: XdpContext) -> u32 {
    if unchecked_read(&ctx) == 7 {
        return xdp_action::XDP_DROP;
    }
    xdp_action::XDP_PASS
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
