//! The Received-chain table: real-world-shaped traces and what must be read from them.

use super::*;

/// The expected (server, build, class) of a chain, `None` when it has no on-premises stamp.
type Expected = Option<(&'static str, &'static str, Class)>;

/// (case, header section, expected).
fn cases() -> Vec<(&'static str, String, Expected)> {
    let moat = "Received: from exch1.corp.local ([192.0.2.10])\r\n\tby mx.moat.test (Moat edge-1) with ESMTPS id 6912a3000001.1\r\n\t(version=TLSv1.3 cipher=TLS13_AES_256_GCM_SHA384); Mon, 23 Nov 2026 10:00:05 +0000\r\n";
    let exo = "Received: from AM6PR04MB1234.eurprd04.prod.outlook.com (2603:10a6:20b:1::1) by AM6PR04MB5678.eurprd04.prod.outlook.com (2603:10a6:20b:2::2) with Microsoft SMTP Server (version=TLS1_2, cipher=TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384) id 15.20.9564.3; Mon, 23 Nov 2026 10:00:03 +0000\r\n";
    let exo21 = "Received: from DB9PR01CA0001.eurprd01.prod.exchangelabs.com (2603:10a6:10:1::1) by DB9PR01MB2222.eurprd01.prod.exchangelabs.com (2603:10a6:10:2::2) with Microsoft SMTP Server (version=TLS1_2, cipher=TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384) id 15.21.71.13 via Frontend Transport; Mon, 23 Nov 2026 10:00:02 +0000\r\n";
    let smtp = |by: &str, id: &str| {
        format!("Received: from client.corp.local (10.0.0.9) by {by} (10.0.0.5) with Microsoft SMTP Server (version=TLS1_2, cipher=TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384) id {id}; Mon, 23 Nov 2026 10:00:00 +0000\r\n")
    };
    let mapi = |by: &str, id: &str| {
        format!("Received: from {by} ([fe80::1%12]) by {by} ([fe80::1%12]) with mapi id {id}; Mon, 23 Nov 2026 09:59:59 +0000\r\n")
    };
    let tail = "From: a@contoso.test\r\nTo: b@fabrikam.test\r\nSubject: s\r\n\r\nbody\r\n";
    let c = |parts: &[&str]| format!("{}{tail}", parts.concat());
    vec![
        ("2016 CU23 Oct25SU short", c(&[&smtp("EXCH16.corp.local", "15.1.2507.61")]), Some(("exch16.corp.local", "15.1.2507.61", Class::Compliant))),
        ("2016 CU23 Oct25SU long (mapi)", c(&[&mapi("EXCH16.corp.local", "15.01.2507.061")]), Some(("exch16.corp.local", "15.1.2507.61", Class::Compliant))),
        ("2016 CU23 Mar25SU", c(&[&smtp("exch16.corp.local", "15.1.2507.55")]), Some(("exch16.corp.local", "15.1.2507.55", Class::Unpatched))),
        ("2016 CU22", c(&[&smtp("old16.corp.local", "15.1.2375.37")]), Some(("old16.corp.local", "15.1.2375.37", Class::Unpatched))),
        ("2019 CU15 Oct25SU", c(&[&smtp("exch19.corp.local", "15.2.1748.39")]), Some(("exch19.corp.local", "15.2.1748.39", Class::Compliant))),
        ("2019 CU15 older SU", c(&[&smtp("exch19.corp.local", "15.2.1748.24")]), Some(("exch19.corp.local", "15.2.1748.24", Class::Unpatched))),
        ("2019 CU14 Oct25SU", c(&[&smtp("exch19b.corp.local", "15.2.1544.36")]), Some(("exch19b.corp.local", "15.2.1544.36", Class::Compliant))),
        ("2019 CU14 long form older", c(&[&mapi("EXCH19B.corp.local", "15.02.1544.014")]), Some(("exch19b.corp.local", "15.2.1544.14", Class::Unpatched))),
        ("2019 CU13", c(&[&smtp("exch19c.corp.local", "15.2.1258.39")]), Some(("exch19c.corp.local", "15.2.1258.39", Class::Unpatched))),
        ("SE RTM Oct25SU", c(&[&smtp("se1.corp.local", "15.2.2562.29")]), Some(("se1.corp.local", "15.2.2562.29", Class::Compliant))),
        ("SE Aug26SU", c(&[&smtp("se1.corp.local", "15.2.2562.46")]), Some(("se1.corp.local", "15.2.2562.46", Class::Compliant))),
        ("SE RTM", c(&[&smtp("se1.corp.local", "15.2.2562.17")]), Some(("se1.corp.local", "15.2.2562.17", Class::Unpatched))),
        ("SE future CU", c(&[&smtp("se2.corp.local", "15.2.2700.3")]), Some(("se2.corp.local", "15.2.2700.3", Class::Compliant))),
        ("2013 CU23", c(&[&smtp("exch13.corp.local", "15.0.1497.48")]), Some(("exch13.corp.local", "15.0.1497.48", Class::Unsupported))),
        ("2013 long form", c(&[&mapi("exch13.corp.local", "15.00.1497.048")]), Some(("exch13.corp.local", "15.0.1497.48", Class::Unsupported))),
        ("2010 without TLS details", c(&["Received: from mail.contoso.test (192.0.2.1) by EXCH10.corp.local (10.0.0.5) with Microsoft SMTP Server id 14.3.513.0; Mon, 23 Nov 2026 10:00:00 +0000\r\n"]), Some(("exch10.corp.local", "14.3.513.0", Class::Unsupported))),
        ("2007 with (TLS)", c(&["Received: from exch07.corp.local (10.0.0.7) by exch07hub.corp.local (10.0.0.8) with Microsoft SMTP Server (TLS) id 8.3.517.0; Mon, 23 Nov 2026 10:00:00 +0000\r\n"]), Some(("exch07hub.corp.local", "8.3.517.0", Class::Unsupported))),
        ("Frontend Transport", c(&["Received: from EXCH16.corp.local (10.0.0.5) by EXCH16.corp.local (10.0.0.5) with Microsoft SMTP Server (version=TLS1_2, cipher=TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384) id 15.1.2507.61 via Frontend Transport; Mon, 23 Nov 2026 10:00:00 +0000\r\n"]), Some(("exch16.corp.local", "15.1.2507.61", Class::Compliant))),
        ("folded stamp", c(&["Received: from EXCH19.corp.local (10.0.0.5) by\r\n EXCH19.corp.local (10.0.0.5) with Microsoft SMTP Server\r\n (version=TLS1_2, cipher=TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384)\r\n id 15.2.1748.10; Mon, 23 Nov 2026 10:00:00 +0000\r\n"]), Some(("exch19.corp.local", "15.2.1748.10", Class::Unpatched))),
        ("folded with tabs, LF only", "Received: from a.corp.local (10.0.0.1)\n\tby B.CORP.LOCAL (10.0.0.2)\n\twith Microsoft SMTP Server id 15.1.2507.61;\n\tMon, 23 Nov 2026 10:00:00 +0000\nSubject: x\n\nbody\n".into(), Some(("b.corp.local", "15.1.2507.61", Class::Compliant))),
        ("Moat's own stamp on top is skipped", c(&[moat, &smtp("exch16.corp.local", "15.1.2507.61")]), Some(("exch16.corp.local", "15.1.2507.61", Class::Compliant))),
        ("newest stamp wins (edge over mailbox)", c(&[&smtp("edge.corp.local", "15.2.1748.39"), &mapi("mbx.corp.local", "15.02.1748.039")]), Some(("edge.corp.local", "15.2.1748.39", Class::Compliant))),
        ("EXO hop above on-prem is skipped", c(&[exo, &smtp("exch16.corp.local", "15.1.2507.44")]), Some(("exch16.corp.local", "15.1.2507.44", Class::Unpatched))),
        ("EXO 15.21 hop skipped", c(&[exo21, &mapi("exch19.corp.local", "15.02.1748.039")]), Some(("exch19.corp.local", "15.2.1748.39", Class::Compliant))),
        ("only EXO hops", c(&[exo, exo21]), None),
        ("Moat and EXO only", c(&[moat, exo]), None),
        ("no Received at all", tail.to_owned(), None),
        ("Postfix hops only", c(&["Received: from mail.example.org (mail.example.org [192.0.2.3])\r\n\tby mx.example.net (Postfix) with ESMTPS id 4XyZ1234;\r\n\tMon, 23 Nov 2026 10:00:00 +0000 (UTC)\r\n"]), None),
        ("IIS SMTPSVC is not Exchange", c(&["Received: from web01 ([10.0.0.9]) by web01.corp.local with Microsoft SMTPSVC(10.0.17763.1697); Mon, 23 Nov 2026 10:00:00 +0000\r\n"]), None),
        ("garbage build", c(&[&smtp("exch.corp.local", "15.1.x.61")]), None),
        ("three-part build", c(&[&smtp("exch.corp.local", "15.1.2507")]), None),
        ("no id", c(&["Received: from a (1.2.3.4) by b.corp.local (1.2.3.5) with Microsoft SMTP Server; Mon, 23 Nov 2026\r\n"]), None),
        ("Received in the body is not a header", format!("Subject: x\r\n\r\n{}", smtp("body.corp.local", "15.1.2507.61")), None),
        ("unknown future product", c(&[&smtp("exch.corp.local", "16.0.100.1")]), Some(("exch.corp.local", "16.0.100.1", Class::Unknown))),
        ("upper-case keywords", c(&["Received: FROM a.corp.local (10.0.0.1) BY EXCH16.CORP.LOCAL (10.0.0.2) WITH MICROSOFT SMTP SERVER ID 15.1.2507.61; Mon, 23 Nov 2026 10:00:00 +0000\r\n"]), Some(("exch16.corp.local", "15.1.2507.61", Class::Compliant))),
    ]
}

#[test]
fn received_chains_give_the_server_build_and_class() {
    let baseline = Baseline::default();
    let all = cases();
    assert!(all.len() >= 30, "{} cases", all.len());
    for (name, header, want) in all {
        let got = sighting(&header).map(|s| {
            let class = baseline.classify(&s.build);
            (s.server, s.build.to_string(), class)
        });
        let want = want.map(|(s, b, c)| (s.to_owned(), b.to_owned(), c));
        assert_eq!(got, want, "{name}");
    }
}

/// Era chains: Exchange Online and EOP hops of 2015-2019 stamped 15.0, 15.1 and 15.2 builds, so
/// only their `by` host tells them from an on-premises server. The host-name shapes are those
/// Microsoft documents and public traces show (`docs/exchange-sources.md`); the chains are
/// constructed in that format, not copied from one archive.
fn era_cases() -> Vec<(&'static str, String, Expected)> {
    let hop = |from: &str, by: &str, id: &str, date: &str| {
        format!("Received: from {from} (10.152.20.53) by {by} (10.152.21.18) with Microsoft SMTP Server (version=TLS1_2, cipher=TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA384_P384) id {id}; {date}\r\n")
    };
    let ft = |by: &str, id: &str, date: &str| {
        format!("Received: from mail.contoso.test (192.0.2.25) by {by} (10.152.19.47) with Microsoft SMTP Server (version=TLS1_2, cipher=TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA384_P384) id {id} via Frontend Transport; {date}\r\n")
    };
    let onprem = |by: &str, id: &str, date: &str| {
        format!("Received: from EXCH-MBX1.corp.contoso.test (10.0.0.21) by {by} (10.0.0.22) with Microsoft SMTP Server (version=TLS1_2, cipher=TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA384_P384_P256) id {id}; {date}\r\n")
    };
    let tail = "From: a@contoso.test\r\nTo: b@fabrikam.test\r\nSubject: s\r\n\r\nbody\r\n";
    let c = |parts: &[String]| format!("{}{tail}", parts.concat());
    let d15 = "Mon, 1 Jun 2015 14:02:11 +0000";
    let d17 = "Tue, 2 May 2017 09:12:41 +0000";
    let d19 = "Thu, 21 Mar 2019 13:00:44 +0000";
    vec![
        ("2015 EOP frontend 15.0 only", c(&[ft("BN1BFFO11FD012.mail.protection.outlook.com", "15.0.1156.7", d15)]), None),
        ("2015 exchangelabs forest 15.1", c(&[hop("BY2PR01MB123.prod.exchangelabs.com", "BY2PR01MB456.prod.exchangelabs.com", "15.1.154.19", d15)]), None),
        ("2017 EXO mailbox hop 15.1 in eurprd07", c(&[hop("AM5PR0701MB2468.eurprd07.prod.outlook.com", "AM5PR0701MB2467.eurprd07.prod.outlook.com", "15.1.1101.14", d17)]), None),
        ("2017 EOP hosted hop in eop-EUR03", c(&[hop("DB5EUR03FT012.eop-EUR03.prod.protection.outlook.com", "DB5EUR03HT123.eop-EUR03.prod.protection.outlook.com", "15.1.1075.5", d17)]), None),
        ("2019 EOP frontend 15.2, upper case", c(&[ft("VI1EUR04FT012.MAIL.PROTECTION.OUTLOOK.COM", "15.2.1.3", d19)]), None),
        ("2019 mapi hop in namprd", c(&["Received: from BLAPR05MB7491.namprd05.prod.outlook.com ([fe80::1]) by BLAPR05MB7491.namprd05.prod.outlook.com ([fe80::1%5]) with mapi id 15.01.1694.006; Thu, 21 Mar 2019 13:00:40 +0000\r\n".to_owned()]), None),
        ("office365.com host 15.1", c(&[hop("a.outlook.office365.com", "BN6PR11CA0001.outlook.office365.com", "15.1.1161.0", d17)]), None),
        ("GCC High EOP 15.1", c(&[ft("BN3USG01FT003.eop-usg01.protection.office365.us", "15.1.1101.9", d17)]), None),
        ("DoD EOP 15.1", c(&[ft("DM3USG02FT010.eop-usg02.protection.apps.mil", "15.1.1101.9", d17)]), None),
        ("21Vianet EOP 15.1", c(&[ft("BJSCHN02FT006.mail.protection.partner.outlook.cn", "15.1.1075.1", d17)]), None),
        ("21Vianet mailbox 15.1", c(&[hop("SHAPR01MB123.CHNPR01.prod.partner.outlook.cn", "SHAPR01MB456.CHNPR01.prod.partner.outlook.cn", "15.1.1101.10", d17)]), None),
        ("Cloud Deutschland EOP 15.1", c(&[ft("FRAEUR01FT004.mail.protection.outlook.de", "15.1.1101.9", d17)]), None),
        (
            "hybrid 2017: EOP and EXO above an on-prem 2016 CU5",
            c(&[
                ft("VE1EUR03FT036.mail.protection.outlook.com", "15.1.1101.9", d17),
                hop("AM5PR0701MB2468.eurprd07.prod.outlook.com", "AM5PR0701MB2467.eurprd07.prod.outlook.com", "15.1.1101.14", d17),
                onprem("EXCH-HUB1.corp.contoso.test", "15.1.845.34", d17),
            ]),
            Some(("exch-hub1.corp.contoso.test", "15.1.845.34", Class::Unpatched)),
        ),
        (
            "hybrid 2019: EOP 15.2 above an on-prem 2019 CU1",
            c(&[
                ft("HE1EUR04FT058.mail.protection.outlook.com", "15.2.1.3", d19),
                onprem("EXCH19.corp.contoso.test", "15.2.330.5", d19),
            ]),
            Some(("exch19.corp.contoso.test", "15.2.330.5", Class::Unpatched)),
        ),
        (
            "hybrid 2015 GCC High: EOP above an on-prem 2013",
            c(&[
                ft("BN3USG01FT003.eop-usg01.protection.office365.us", "15.0.1156.7", d15),
                onprem("exch13.agency.test", "15.0.1104.5", d15),
            ]),
            Some(("exch13.agency.test", "15.0.1104.5", Class::Unsupported)),
        ),
        (
            "an on-prem server named like the cloud but not under it is kept",
            c(&[onprem("mail.evil-outlook.com", "15.1.2507.61", d19)]),
            Some(("mail.evil-outlook.com", "15.1.2507.61", Class::Compliant)),
        ),
    ]
}

#[test]
fn cloud_stamped_hops_are_never_on_premises_servers() {
    let baseline = Baseline::default();
    let all = era_cases();
    assert!(all.len() >= 15, "{} cases", all.len());
    for (name, header, want) in all {
        let got = sighting(&header).map(|s| {
            let class = baseline.classify(&s.build);
            (s.server, s.build.to_string(), class)
        });
        let want = want.map(|(s, b, c)| (s.to_owned(), b.to_owned(), c));
        assert_eq!(got, want, "{name}");
    }
}

#[test]
fn cloud_hosts_match_on_label_boundaries() {
    for (host, cloud) in [
        ("outlook.com", true),
        ("OUTLOOK.COM.", true),
        ("AM6PR04MB1234.eurprd04.prod.outlook.com", true),
        ("x.mail.protection.outlook.com", true),
        ("outlook.office365.com", true),
        ("x.protection.office365.us", true),
        ("x.protection.apps.mil", true),
        ("x.mail.protection.partner.outlook.cn", true),
        ("x.prod.exchangelabs.com", true),
        ("evil-outlook.com", false),
        ("outlook.com.evil.test", false),
        ("apps.mil", false),
        ("outlook.cn", false),
        ("exch.corp.local", false),
        ("", false),
    ] {
        assert_eq!(cloud_host(host), cloud, "{host}");
    }
}

#[test]
fn evidence_is_the_line_as_received_unfolded_and_bounded() {
    let header = "Received: from EXCH19.corp.local (10.0.0.5) by\r\n EXCH19.corp.local (10.0.0.5) with Microsoft SMTP Server\r\n\tid 15.2.1748.10; Mon, 23 Nov 2026 10:00:00 +0000\r\nSubject: x\r\n\r\n";
    let (s, line) = evidence(header).unwrap();
    assert_eq!(s.server, "exch19.corp.local");
    assert_eq!(
        line,
        "Received: from EXCH19.corp.local (10.0.0.5) by EXCH19.corp.local (10.0.0.5) with Microsoft SMTP Server id 15.2.1748.10; Mon, 23 Nov 2026 10:00:00 +0000"
            .replace("Server id", "Server\tid")
            .replace('\t', " ")
    );
    // A long stamp is cut at a character boundary within the bound; controls become spaces.
    let long = format!(
        "Received: from a (10.0.0.1) by exch.corp.local with Microsoft SMTP Server id 15.1.2507.61; ({})\r\n\r\n",
        "é\u{7}".repeat(400)
    );
    let (_, line) = evidence(&long).unwrap();
    assert!(line.len() <= MAX_EVIDENCE_BYTES, "{}", line.len());
    assert!(line.len() > MAX_EVIDENCE_BYTES - 4);
    assert!(!line.contains(['\r', '\n', '\u{7}']));
    assert_eq!(bound_evidence("a\r\nb\u{0}c"), "ab c");
}

#[test]
fn the_catalog_ships_every_row_and_names_the_baseline() {
    let rows = catalog(CATALOG_CSV);
    assert_eq!(rows.len(), 285);
    for b in &Baseline::default().0 {
        let row = rows
            .iter()
            .find(|r| r.build == *b)
            .unwrap_or_else(|| panic!("{b} not in the catalog"));
        assert!(row.update.contains("Oct25SU"), "{row:?}");
        assert_eq!(row.product, b.product().name());
    }
    // Every catalog row's product matches the version rules.
    for r in &rows {
        assert_eq!(r.build.product().name(), r.product, "{r:?}");
    }
}

#[test]
fn raising_the_baseline_makes_a_compliant_server_unpatched() {
    let b = Build::parse("15.2.2562.29").unwrap();
    assert_eq!(Baseline::default().classify(&b), Class::Compliant);
    let raised = Baseline(vec![Build::parse("15.2.2562.46").unwrap()]);
    assert_eq!(raised.classify(&b), Class::Unpatched);
    assert_eq!(
        raised.recommended(&b),
        vec![Build::parse("15.2.2562.46").unwrap()]
    );
}
