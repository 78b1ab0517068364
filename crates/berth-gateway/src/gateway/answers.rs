//! A replica's answer through the whole gateway: for generated answers, valid, odd and broken, that hyper's
//! client reads straight from the replica, a client of the gateway reads the same status, end-to-end
//! fields and body, less what the gateway adds (`X-Request-Id`, a `Date` where there was none), or gets
//! the gateway's 502 for an answer it refuses. The way through is the plain listener's (`serve_h1`, the
//! replica's fields kept as read and written out as they are) and the gateway's own HTTP/1.1 client.

use http::{Method, Version};

use super::one_replica::{gateway, table};
use crate::test_rng::Rng;
use crate::upstream::h1::agreement::{generate, hyper_takes_from, replica};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_of_the_gateway_reads_the_answer_a_client_of_the_replica_reads() {
    let (seed, cases) = crate::test_rng::seed_and_cases();
    let (gateway, addr) = gateway().await;
    let (mut same, mut refused, mut unread) = (0, 0, 0);
    for case in 0..cases / 4 {
        let mut rng = Rng::for_case(seed, case);
        let answer = generate(&mut rng);
        let method = if rng.one_in(8) { Method::HEAD } else { Method::GET };
        let Ok(direct) = hyper_takes_from(replica(answer.clone()).await, &method, Version::HTTP_11).await else {
            unread += 1;
            continue;
        };
        gateway.update(&table(case, replica(answer.clone()).await));
        let via = hyper_takes_from(addr, &method, Version::HTTP_11).await;
        let mut via = via.unwrap_or_else(|error| {
            panic!("case {case} (seed {seed:#x}): {:?} through the gateway: {error}", String::from_utf8_lossy(&answer))
        });
        if via.status == 502 && direct.status != 502 {
            refused += 1;
            continue;
        }
        let had_date = direct.fields.iter().any(|(name, _)| name == "date");
        via.fields.retain(|(name, _)| name != "x-request-id" && (had_date || name != "date"));
        assert_eq!(
            via,
            direct,
            "case {case} (seed {seed:#x}): to {method} the replica answered {:?}; the gateway's client read \
             the left, the replica's the right",
            String::from_utf8_lossy(&answer),
        );
        same += 1;
    }
    println!("{} generated answers: {same} read the same, {refused} refused, {unread} not read by hyper", cases / 4);
    assert!(same as u64 > cases / 10, "only {same} of {} answers went through", cases / 4);
}
