//! TSIG without keys (RFC 8945 §5.2.2) and meta-RRs in the wrong place, over real sockets,
//! and against `dig -y` as a real signer.

use hickory_proto::op::{Message, ResponseCode};

use crate::support::{Query, Server, tcp};

const A: u16 = 1;
const OPT: u16 = 41;
const TKEY: u16 = 249;
const TSIG: u16 = 250;
const NOTAUTH: u8 = 9;
const BADKEY: u16 = 17;

/// TSIG RDATA for hmac-sha256 with a 32-byte MAC, original id 0x4d52.
fn tsig_rdata() -> Vec<u8> {
    let mut r = b"\x0bhmac-sha256\x00".to_vec();
    r.extend_from_slice(&[0x00, 0x00, 0x69, 0x2d, 0x00, 0x00]); // time signed
    r.extend_from_slice(&300u16.to_be_bytes()); // fudge
    r.extend_from_slice(&32u16.to_be_bytes());
    r.extend_from_slice(&[0xab; 32]);
    r.extend_from_slice(&0x4d52u16.to_be_bytes());
    r.extend_from_slice(&[0, 0, 0, 0]); // error, other len
    r
}

/// A resource record: owner (wire), type, class, TTL, RDATA.
fn record(owner: &[u8], rtype: u16, class: u16, ttl: u32, rdata: &[u8]) -> Vec<u8> {
    let mut r = owner.to_vec();
    r.extend_from_slice(&rtype.to_be_bytes());
    r.extend_from_slice(&class.to_be_bytes());
    r.extend_from_slice(&ttl.to_be_bytes());
    r.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
    r.extend_from_slice(rdata);
    r
}

fn tsig_record() -> Vec<u8> {
    record(b"\x07unknown\x03key\x00", TSIG, 255, 0, &tsig_rdata())
}

fn opt_record() -> Vec<u8> {
    record(b"\x00", OPT, 1232, 0, &[])
}

/// `static.gslb.example.test A` followed by `sections` (answer, authority, additional).
fn query_with(sections: [&[Vec<u8>]; 3]) -> Vec<u8> {
    let mut p = Query::new("static.gslb.example.test", A).packet();
    for (i, records) in sections.iter().enumerate() {
        p[6 + 2 * i..8 + 2 * i].copy_from_slice(&(records.len() as u16).to_be_bytes());
        for r in *records {
            p.extend_from_slice(r);
        }
    }
    p
}

/// Check a BADKEY reply byte for byte: NOTAUTH, no records but the TSIG echoed unsigned
/// (after the OPT when there is one).
fn assert_badkey(reply: &[u8], with_opt: bool) {
    assert_eq!(&reply[..2], &0x4d52u16.to_be_bytes(), "id");
    assert_eq!(reply[3] & 0x0f, NOTAUTH, "rcode");
    assert_eq!(reply[2] & 0x04, 0, "AA is not set");
    let counts: Vec<u16> = (0..4)
        .map(|i| u16::from_be_bytes([reply[4 + 2 * i], reply[5 + 2 * i]]))
        .collect();
    assert_eq!(counts, [1, 0, 0, 1 + u16::from(with_opt)]);
    let mut rdata = b"\x0bhmac-sha256\x00".to_vec();
    rdata.extend_from_slice(&[0x00, 0x00, 0x69, 0x2d, 0x00, 0x00]);
    rdata.extend_from_slice(&300u16.to_be_bytes());
    rdata.extend_from_slice(&0u16.to_be_bytes()); // MAC size 0, no MAC
    rdata.extend_from_slice(&0x4d52u16.to_be_bytes());
    rdata.extend_from_slice(&BADKEY.to_be_bytes());
    rdata.extend_from_slice(&0u16.to_be_bytes());
    let expected = record(b"\x07unknown\x03key\x00", TSIG, 255, 0, &rdata);
    assert!(
        reply.ends_with(&expected),
        "the TSIG record echoed with BADKEY is last: {reply:02x?}"
    );
}

/// A signed query for `static.gslb.example.test A`.
pub fn signed_query() -> Vec<u8> {
    query_with([&[], &[], &[opt_record(), tsig_record()]])
}

#[tokio::test]
async fn a_signed_query_gets_notauth_badkey_with_its_tsig_echoed_unsigned() {
    let s = Server::example().await;
    let plain = query_with([&[], &[], &[tsig_record()]]);
    assert_badkey(&s.udp(&plain).await.expect("udp reply"), false);
    assert_badkey(&tcp(s.dns, &[plain]).await.pop().expect("tcp reply"), false);
    let with_opt = query_with([&[], &[], &[opt_record(), tsig_record()]]);
    let reply = s.udp(&with_opt).await.expect("udp reply");
    assert_badkey(&reply, true);
    // The OPT comes first; the reply as a whole is a valid message.
    let m = Message::from_vec(&reply).expect("reply parses");
    assert!(m.edns.is_some());
    s.stop().await;
}

#[tokio::test]
async fn meta_records_in_the_wrong_place_get_formerr() {
    let s = Server::example().await;
    let tkey = record(b"\x00", TKEY, 255, 0, &[0; 4]);
    let mut class_in = tsig_record();
    let n = class_in.len() - tsig_rdata().len() - 10;
    class_in[n + 2..n + 4].copy_from_slice(&1u16.to_be_bytes());
    let cases: [(&str, Vec<u8>); 7] = [
        (
            "TSIG not last",
            query_with([&[], &[], &[tsig_record(), opt_record()]]),
        ),
        (
            "TSIG in the answer section",
            query_with([&[tsig_record()], &[], &[]]),
        ),
        ("TSIG of class IN", query_with([&[], &[], &[class_in]])),
        (
            "TKEY in the authority section",
            query_with([&[], &[tkey], &[]]),
        ),
        (
            "OPT in the authority section",
            query_with([&[], &[opt_record()], &[]]),
        ),
        (
            "two OPTs",
            query_with([&[], &[], &[opt_record(), opt_record()]]),
        ),
        (
            "two TSIGs",
            query_with([&[], &[], &[tsig_record(), tsig_record()]]),
        ),
    ];
    for (case, packet) in cases {
        let m = Message::from_vec(&s.udp(&packet).await.expect("reply")).expect("parses");
        assert_eq!(m.metadata.response_code, ResponseCode::FormErr, "{case}");
    }
    // Still serving.
    let m = s.ask(&Query::new("static.gslb.example.test", A)).await;
    assert_eq!(m.answers.len(), 2);
    s.stop().await;
}

#[tokio::test]
async fn dig_signing_with_a_key_meridian_does_not_know_is_told_badkey() {
    let s = Server::example().await;
    let port = s.dns.port().to_string();
    let dig = move || {
        std::process::Command::new("dig")
            .args([
                "-y",
                "hmac-sha256:unknown.key:c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0",
                "-p",
                &port,
                "@127.0.0.1",
                "+tries=1",
                "+time=2",
                "static.gslb.example.test",
                "A",
            ])
            .output()
    };
    let out = tokio::task::spawn_blocking(dig)
        .await
        .expect("task")
        .expect("dig runs (bind9-dnsutils, installed by .ci/run)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("status: NOTAUTH") && text.contains("BADKEY"),
        "dig says:\n{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    s.stop().await;
}
