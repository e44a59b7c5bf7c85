//! The receiver tracker ([`super::code`]) on hand-made machine code.

use super::{code::*, SemanticError};

#[test]
fn follows_the_receiver_through_a_spill_and_a_call() {
    let code = [
        0x48, 0x89, 0x44, 0x24, 0x10, // mov [rsp+0x10], rax
        0xe8, 0x00, 0x00, 0x00, 0x00, // call (next)
        0x48, 0x8b, 0x7c, 0x24, 0x10, // mov rdi, [rsp+0x10]
        0x80, 0x7f, 0x28, 0x00, // cmp byte [rdi+0x28], 0
        0x48, 0x8b, 0x57, 0x08, // mov rdx, [rdi+8]
        0x4c, 0x8b, 0x4a, 0x28, // mov r9, [rdx+0x28]
        0xc6, 0x47, 0x28, 0x01, // mov byte [rdi+0x28], 1
        0x31, 0xff, // xor edi, edi
        0x80, 0x7f, 0x30, 0x00, // cmp byte [rdi+0x30], 0: no longer the receiver
        0xc3, 0xcc, 0xcc,
    ];
    let got = receiver_accesses("f", &code, 0x1000, 0x28).unwrap();
    let shapes: Vec<(u64, Shape)> = got.iter().map(|a| (a.disp, a.shape)).collect();
    assert_eq!(
        shapes,
        [
            (0x28, Shape::TestByteZero),
            (8, Shape::LoadPointer { deref: true }),
            (0x28, Shape::SetByteOne),
        ]
    );
}

#[test]
fn a_register_holds_the_receiver_only_if_it_does_on_every_path() {
    let code = [
        0x48, 0x89, 0xc7, // mov rdi, rax
        0x74, 0x03, // je +3
        0x48, 0x89, 0xdf, // mov rdi, rbx
        0x80, 0x7f, 0x28, 0x00, // cmp byte [rdi+0x28], 0 (join: not known)
        0x80, 0x78, 0x10, 0x00, // cmp byte [rax+0x10], 0
        0xc3,
    ];
    let got = receiver_accesses("f", &code, 0x1000, 0x28).unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!((got[0].disp, got[0].ip), (0x10, 0x100c));
    // Undecodable code is an error, not a shorter function.
    assert!(matches!(
        receiver_accesses("f", &[0x48, 0xb8, 0x01], 0x10, 0),
        Err(SemanticError::Undecodable { address: 0x10, .. })
    ));
}

/// Arbitrary bytes give accesses or a typed error, never a panic (branches out of the
/// range, into the middle of instructions, loops).
#[test]
fn random_code_never_panics() {
    let mut rng = fastrand::Rng::with_seed(13);
    let mut decoded = 0;
    for _ in 0..3000 {
        let len = rng.usize(1..200);
        // Biased towards the opcodes the tracker looks at: mov, cmp, jcc, call, ret.
        let code: Vec<u8> = (0..len)
            .map(|_| match rng.u8(0..8) {
                0 => 0x48,
                1 => 0x8b,
                2 => 0x74,
                3 => 0xe8,
                4 => 0x80,
                _ => rng.u8(..),
            })
            .collect();
        if receiver_accesses("f", &code, 0x1000, 0x28).is_ok() {
            decoded += 1;
        }
    }
    assert!(decoded > 0);
}
